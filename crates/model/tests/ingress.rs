//! `IngressSnapshot::build` against Kubernetes manifests: class selection, paths and hosts,
//! precedence, canaries, conflicts, annotations, TLS, the ConfigMap and backends resolved
//! through the L4 snapshot.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use proptest::prelude::*;
use rvs_model::ingress::{
    BackendProtocol, GatewayOptions, HostMatch, IngressBuild, IngressSnapshot, PathMatch,
    TemplatePart, VirtualHost,
};
use rvs_model::{BuildOptions, ObjectSet, Origin, Problem, Snapshot, Sourced};
use serde::Deserialize;

const FILE: &str = "manifests.yaml";

/// Parses a multi-document YAML text as a manifest source would (Secrets' `stringData`
/// merged into `data`).
fn objects(yaml: &str) -> ObjectSet {
    let mut set = ObjectSet::default();
    for (document, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(de).expect("test YAML parses");
        if value.is_null() {
            continue;
        }
        let origin = Origin::File {
            path: Path::new(FILE).to_path_buf(),
            document,
        };
        let kind = value.get("kind").and_then(|k| k.as_str()).map(String::from);
        match kind.as_deref() {
            Some("Service") => set.services.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).expect("Service")),
            }),
            Some("EndpointSlice") => set.endpoint_slices.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).expect("EndpointSlice")),
            }),
            Some("Ingress") => set.ingresses.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).expect("Ingress")),
            }),
            Some("IngressClass") => set.ingress_classes.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).expect("IngressClass")),
            }),
            Some("ConfigMap") => set.config_maps.push(Sourced {
                origin,
                object: std::sync::Arc::new(serde_yaml::from_value(value).expect("ConfigMap")),
            }),
            Some("Secret") => {
                let mut secret: k8s_openapi::api::core::v1::Secret =
                    serde_yaml::from_value(value).expect("Secret");
                for (k, v) in secret.string_data.take().unwrap_or_default() {
                    secret
                        .data
                        .get_or_insert_with(Default::default)
                        .insert(k, ByteString(v.into_bytes()));
                }
                set.secrets.push(Sourced {
                    origin,
                    object: std::sync::Arc::new(secret),
                })
            }
            other => panic!("test manifest of kind {other:?}"),
        }
    }
    set
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ingress")
        .join(name);
    std::fs::read_to_string(path).expect("fixture readable")
}

/// Class-less Ingresses are ours: most tests need no IngressClass.
fn classless() -> GatewayOptions {
    GatewayOptions {
        watch_without_class: true,
        ..GatewayOptions::default()
    }
}

fn build_with(
    yaml: &str,
    options: &GatewayOptions,
    previous: Option<&IngressSnapshot>,
) -> IngressBuild {
    let set = objects(yaml);
    let (l4, _) = Snapshot::build(&set, &BuildOptions::default(), None);
    IngressSnapshot::build(&set, &l4, options, previous)
}

fn build(yaml: &str) -> IngressBuild {
    build_with(yaml, &classless(), None)
}

/// The endpoints the route for `host` and `path` sends to.
fn endpoints_of(built: &IngressBuild, host: &str, path: &str) -> Vec<String> {
    let route = built.snapshot.virtual_host(host).route(path).unwrap();
    route
        .backend
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn texts(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

fn kind(path: &PathMatch) -> &'static str {
    match path {
        PathMatch::Exact(_) => "exact",
        PathMatch::Prefix {
            element_wise: true, ..
        } => "prefix",
        PathMatch::Prefix {
            element_wise: false,
            ..
        } => "string-prefix",
        PathMatch::Regex(_) => "regex",
    }
}

/// One line per host, one per route: `shop.example.com tls`,
/// `  prefix /api -> shop/shop:80 [10.1.0.1:8080] by shop/shop canary shop/shop-canary`.
fn render(s: &IngressSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut host = |vh: &VirtualHost| {
        out.push(format!(
            "{}{}",
            vh.host.get(),
            if vh.tls { " tls" } else { "" }
        ));
        let target = |t: &rvs_model::ingress::RouteTarget| {
            let eps: Vec<String> = t
                .backend
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect();
            let canary = t
                .canary
                .as_ref()
                .map(|c| format!(" canary {}", c.ingress))
                .unwrap_or_default();
            format!(
                "{} [{}] by {}{canary}",
                t.backend.service,
                eps.join(" "),
                t.ingress
            )
        };
        for r in &vh.routes {
            out.push(format!(
                "  {} {} -> {}",
                kind(&r.path),
                r.path.as_str(),
                target(&r.target)
            ));
        }
        if let Some(d) = &vh.default_route {
            out.push(format!("  default -> {}", target(d)));
        }
    };
    for vh in &s.hosts {
        host(vh);
    }
    if !s.default_host.routes.is_empty() || s.default_host.default_route.is_some() {
        host(&s.default_host);
    }
    out
}

const NONE: [&str; 0] = [];

/// Services `web` (ports http 80 and admin 9000) and `api` (port 80), with endpoints.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: admin, port: 9000}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: admin, port: 9000}]
endpoints:
  - addresses: [10.1.0.2]
  - addresses: [10.1.0.1]
  - addresses: [10.1.0.9]
    conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-a, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.2.0.1]
"#;

/// An Ingress `name` with the given annotations and `host: {path: (type, service)}` rules.
fn ingress(name: &str, annotations: &[(&str, &str)], rules: &[(&str, &str, &str, &str)]) -> String {
    let mut text = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n"
    );
    if !annotations.is_empty() {
        text.push_str("  annotations:\n");
        for (k, v) in annotations {
            let key = if k.contains('/') {
                k.to_string()
            } else {
                format!("nginx.ingress.kubernetes.io/{k}")
            };
            text.push_str(&format!("    {key}: {v:?}\n"));
        }
    }
    text.push_str("spec:\n  rules:\n");
    for (host, path, path_type, service) in rules {
        let (svc, port) = service.split_once(':').unwrap_or((service, "80"));
        let port = match port.parse::<u32>() {
            Ok(n) => format!("{{number: {n}}}"),
            Err(_) => format!("{{name: {port}}}"),
        };
        if !host.is_empty() {
            text.push_str(&format!("    - host: {host:?}\n      http:\n"));
        } else {
            text.push_str("    - http:\n");
        }
        text.push_str(&format!(
            "        paths:\n          - path: {path:?}\n            pathType: {path_type}\n            \
             backend: {{service: {{name: {svc}, port: {port}}}}}\n"
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------------

#[test]
fn shop_fixture() {
    let options = GatewayOptions {
        configmap: Some(("ingress".into(), "rvs".into())),
        ..GatewayOptions::default()
    };
    let built = build_with(&fixture("shop.yaml"), &options, None);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(texts(&built.warnings), NONE);
    let s = &built.snapshot;
    assert_eq!(
        render(s),
        [
            "shop.example.com tls",
            "  prefix /api -> shop/shop:80 [10.1.0.1:8080 10.1.0.2:8080] by shop/shop canary shop/shop-canary",
            "  prefix / -> shop/shop:http [10.1.0.1:8080 10.1.0.2:8080] by shop/shop",
        ]
    );
    assert_eq!(s.version, 1);
    assert_eq!(s.settings.keep_alive, Duration::from_secs(30));
    let api = s.virtual_host("shop.example.com").route("/api/v1").unwrap();
    assert_eq!(api.policy.read_timeout, Duration::from_secs(120));
    assert_eq!(api.policy.connect_timeout, Duration::from_secs(3));
    assert_eq!(api.policy.body_size_limit, Some(8 << 20));
    let canary = api.canary.as_ref().unwrap();
    assert_eq!(canary.rule.weight, 10);
    assert_eq!(canary.rule.by_header.as_deref(), Some("X-Canary"));
    assert_eq!(canary.backend.endpoints, ["10.1.1.1:8080".parse().unwrap()]);
    // Two Ingresses served; the other class is not.
    let names: Vec<String> = s.ingresses.iter().map(|i| i.ingress.to_string()).collect();
    assert_eq!(names, ["shop/shop", "shop/shop-canary"]);
    assert_eq!(s.certificates.len(), 1);
    assert_eq!(s.certificates[0].hosts, ["shop.example.com"]);
    assert!(s.certificates[0]
        .cert_pem
        .starts_with(b"-----BEGIN CERTIFICATE-----"));
    // Unknown hosts get the (empty) catch-all.
    assert!(s.virtual_host("other.example.com").route("/").is_none());
}

// ---------------------------------------------------------------------------------------------
// Class selection
// ---------------------------------------------------------------------------------------------

const CLASSES: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: rvs}
spec: {controller: rvs.io/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: impostor}
spec: {controller: k8s.io/ingress-nginx}
"#;

fn classed(name: &str, class_name: Option<&str>, annotation: Option<&str>) -> String {
    let mut text = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n"
    );
    if let Some(a) = annotation {
        text.push_str(&format!(
            "  annotations: {{kubernetes.io/ingress.class: {a}}}\n"
        ));
    }
    text.push_str("spec:\n");
    if let Some(c) = class_name {
        text.push_str(&format!("  ingressClassName: {c}\n"));
    }
    text.push_str(&format!(
        "  rules:\n    - host: {name}.example.com\n      http:\n        paths:\n          - \
         {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    ));
    text
}

fn served(built: &IngressBuild) -> Vec<String> {
    built
        .snapshot
        .ingresses
        .iter()
        .map(|i| i.ingress.name.clone())
        .collect()
}

#[test]
fn class_selection() {
    let yaml = [
        SERVICES.to_string(),
        CLASSES.to_string(),
        classed("by-name", Some("rvs"), None),
        classed("other-name", Some("nginx"), None),
        classed("by-annotation", None, Some("rvs")),
        classed("annotation-wins", Some("rvs"), Some("nginx")),
        classed("classless", None, None),
        classed("unknown-class", Some("missing"), None),
    ]
    .concat();
    let strict = GatewayOptions::default();
    let built = build_with(&yaml, &strict, None);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(served(&built), ["by-annotation", "by-name"]);

    let built = build_with(&yaml, &classless(), None);
    assert_eq!(served(&built), ["by-annotation", "by-name", "classless"]);

    // Our class must name our controller.
    let impostor = GatewayOptions {
        ingress_class: "impostor".into(),
        ..GatewayOptions::default()
    };
    let yaml2 = [SERVICES, CLASSES, &classed("x", Some("impostor"), None)].concat();
    assert_eq!(served(&build_with(&yaml2, &impostor, None)), NONE);

    // A default IngressClass of our controller takes class-less Ingresses.
    let default_class = r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: rvs
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: rvs.io/ingress-controller}
"#;
    let yaml3 = [
        SERVICES,
        default_class,
        &classed("classless", None, None),
        &classed("other", Some("nginx"), None),
    ]
    .concat();
    assert_eq!(served(&build_with(&yaml3, &strict, None)), ["classless"]);
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

#[test]
fn backends_resolve_through_the_l4_snapshot() {
    let yaml = [
        SERVICES,
        &ingress(
            "web",
            &[],
            &[
                ("a.example.com", "/", "Prefix", "web:80"),
                ("a.example.com", "/named", "Prefix", "web:http"),
                ("a.example.com", "/admin", "Prefix", "web:9000"),
                ("b.example.com", "/", "Prefix", "web:80"),
                ("b.example.com", "/missing", "Prefix", "nope:80"),
                ("b.example.com", "/noport", "Prefix", "web:81"),
                ("b.example.com", "/noname", "Prefix", "web:grpc"),
            ],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(
        texts(&built.warnings),
        [
            "manifests.yaml (document 5): Ingress default/web: backend default/nope:80: Service default/nope not found; requests get 503",
            "manifests.yaml (document 5): Ingress default/web: backend default/web:81: Service default/web has no TCP port 81 (or was refused); requests get 503",
            "manifests.yaml (document 5): Ingress default/web: backend default/web:grpc: Service default/web has no TCP port grpc (or was refused); requests get 503",
        ]
    );
    assert_eq!(
        render(&built.snapshot),
        [
            "a.example.com",
            "  prefix /admin -> default/web:9000 [10.1.0.1:9000 10.1.0.2:9000] by default/web",
            "  prefix /named -> default/web:http [10.1.0.1:8080 10.1.0.2:8080] by default/web",
            "  prefix / -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/web",
            "b.example.com",
            "  prefix /missing -> default/nope:80 [] by default/web",
            "  prefix /noname -> default/web:grpc [] by default/web",
            "  prefix /noport -> default/web:81 [] by default/web",
            "  prefix / -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/web",
        ]
    );
    // One backend per Service port, shared.
    let s = &built.snapshot;
    let a = s.virtual_host("a.example.com").route("/").unwrap();
    let b = s.virtual_host("b.example.com").route("/").unwrap();
    assert!(Arc::ptr_eq(&a.backend, &b.backend));
}

#[test]
fn terminating_fallback_and_dual_stack() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIPs: [10.96.0.10, "fd00::10"]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.1.0.1]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.1.0.2]
    conditions: {ready: false, serving: false, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: ["fd00::1"]
"#;
    let built = build(&[yaml, &ingress("web", &[], &[("", "/", "Prefix", "web:80")])].concat());
    assert_eq!(texts(&built.warnings), NONE);
    // v6 has a ready endpoint; v4 falls back to its serving terminating one.
    assert_eq!(
        render(&built.snapshot),
        [
            "_",
            "  prefix / -> default/web:80 [10.1.0.1:8080 [fd00::1]:8080] by default/web"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Paths and hosts
// ---------------------------------------------------------------------------------------------

/// Which route's path serves each request path (`-` for none).
fn routed(vh: &VirtualHost, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .map(|p| vh.route(p).map_or("-".into(), |t| t.path.clone()))
        .collect()
}

#[test]
fn path_matching_as_the_ingress_spec_says() {
    let yaml = [
        SERVICES,
        &ingress(
            "paths",
            &[],
            &[
                ("prefix.test", "/foo", "Prefix", "web:80"),
                ("slash.test", "/foo/", "Prefix", "web:80"),
                ("exact.test", "/foo", "Exact", "web:80"),
                ("root.test", "/", "Prefix", "web:80"),
                ("deep.test", "/aaa/bbb", "Prefix", "web:80"),
                ("mixed.test", "/", "Prefix", "web:80"),
                ("mixed.test", "/aaa", "Prefix", "web:80"),
                ("mixed.test", "/aaa/ccc", "Prefix", "web:80"),
                ("both.test", "/foo", "Exact", "api:80"),
                ("both.test", "/foo", "Prefix", "web:80"),
                ("impl.test", "/foo", "ImplementationSpecific", "web:80"),
            ],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    let s = &built.snapshot;
    let requests = ["/foo", "/foo/", "/foo/bar", "/foobar", "/"];
    assert_eq!(
        routed(s.virtual_host("prefix.test"), &requests),
        ["/foo", "/foo", "/foo", "-", "-"]
    );
    assert_eq!(
        routed(s.virtual_host("slash.test"), &requests),
        ["/foo/", "/foo/", "/foo/", "-", "-"]
    );
    assert_eq!(
        routed(s.virtual_host("exact.test"), &requests),
        ["/foo", "-", "-", "-", "-"]
    );
    assert_eq!(
        routed(s.virtual_host("root.test"), &requests),
        ["/", "/", "/", "/", "/"]
    );
    assert_eq!(
        routed(
            s.virtual_host("deep.test"),
            &[
                "/aaa/bbb",
                "/aaa/bbb/",
                "/aaa/bbb/ccc",
                "/aaa/bbbxyz",
                "/aaa"
            ]
        ),
        ["/aaa/bbb", "/aaa/bbb", "/aaa/bbb", "-", "-"]
    );
    assert_eq!(
        routed(
            s.virtual_host("mixed.test"),
            &["/aaa/ccc", "/aaa/ccc/x", "/aaa/cc", "/aaa", "/ccc"]
        ),
        ["/aaa/ccc", "/aaa/ccc", "/aaa", "/aaa", "/"]
    );
    // Exact and Prefix of the same path are different locations: Exact first.
    let both = s.virtual_host("both.test");
    assert_eq!(both.route("/foo").unwrap().backend.service.name, "api");
    assert_eq!(both.route("/foo/x").unwrap().backend.service.name, "web");
    // ImplementationSpecific without regex: a string prefix, as nginx does.
    assert_eq!(
        routed(s.virtual_host("impl.test"), &requests),
        ["/foo", "/foo", "/foo", "/foo", "-"]
    );
}

#[test]
fn hosts_exact_wildcard_and_catch_all() {
    let yaml = [
        SERVICES,
        &ingress(
            "hosts",
            &[],
            &[
                ("*.example.com", "/", "Prefix", "web:80"),
                ("*.a.example.com", "/", "Prefix", "web:80"),
                ("WWW.Example.com", "/", "Prefix", "api:80"),
                ("", "/", "Prefix", "web:9000"),
            ],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    let s = &built.snapshot;
    let hosts: Vec<String> = s.hosts.iter().map(|vh| vh.host.get().to_string()).collect();
    assert_eq!(
        hosts,
        ["www.example.com", "*.a.example.com", "*.example.com"]
    );
    let served_by = |host: &str| {
        let vh = s.virtual_host(host);
        format!(
            "{} {}",
            vh.host.get(),
            vh.route("/")
                .map_or("-".into(), |t| t.backend.service.to_string())
        )
    };
    assert_eq!(
        served_by("www.example.com"),
        "www.example.com default/api:80"
    );
    assert_eq!(served_by("foo.example.com"), "*.example.com default/web:80");
    assert_eq!(
        served_by("b.a.example.com"),
        "*.a.example.com default/web:80"
    );
    // A wildcard covers exactly one label.
    assert_eq!(served_by("x.b.example.com"), "_ default/web:9000");
    assert_eq!(served_by("example.com"), "_ default/web:9000");
    assert_eq!(served_by("unknown.test"), "_ default/web:9000");
    assert_eq!(s.exact_hosts.len(), 1);
}

#[test]
fn bad_hosts_and_paths_are_problems() {
    let yaml = [
        SERVICES,
        &ingress("host", &[], &[("foo.*.com", "/", "Prefix", "web:80")]),
        &ingress("relative", &[], &[("a.test", "foo", "Prefix", "web:80")]),
        &ingress("exact", &[], &[("a.test", "foo", "Exact", "web:80")]),
        &ingress("kind", &[], &[("a.test", "/", "Regex", "web:80")]),
        &ingress(
            "regex",
            &[("use-regex", "true")],
            &[("a.test", "/(unclosed", "ImplementationSpecific", "web:80")],
        ),
        &ingress("port", &[], &[("a.test", "/", "Prefix", "web:70000")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(
        texts(&built.problems),
        [
            "manifests.yaml (document 5): Ingress default/host: spec.rules[0].host: \"foo.*.com\" is not a DNS name (a wildcard only as the whole first label, like *.example.com)",
            "manifests.yaml (document 6): Ingress default/relative: spec.rules[0].http.paths[0].path: \"foo\" does not start with /",
            "manifests.yaml (document 7): Ingress default/exact: spec.rules[0].http.paths[0].path: \"foo\" does not start with /",
            "manifests.yaml (document 8): Ingress default/kind: spec.rules[0].http.paths[0].pathType: \"Regex\" is not Exact, Prefix or ImplementationSpecific",
            "manifests.yaml (document 9): Ingress default/regex: spec.rules[0].http.paths[0].path: \"/(unclosed\" is not a valid regular expression: error: unclosed group",
            "manifests.yaml (document 10): Ingress default/port: spec.rules[0].http.paths[0].backend.service.port.number: 70000 is not a port number (1-65535)",
        ]
    );
    assert_eq!(served(&built), NONE);
    assert!(built.snapshot.hosts.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Regex
// ---------------------------------------------------------------------------------------------

#[test]
fn use_regex_makes_the_whole_host_regex() {
    let yaml = [
        SERVICES,
        &ingress(
            "rewrite",
            &[("rewrite-target", "/$2")],
            &[(
                "r.test",
                "/api(/|$)(.*)",
                "ImplementationSpecific",
                "api:80",
            )],
        ),
        &ingress(
            "plain",
            &[],
            &[
                ("r.test", "/static", "Prefix", "web:80"),
                ("r.test", "/img.v1", "ImplementationSpecific", "web:80"),
                ("r.test", "/exact", "Exact", "web:80"),
                ("other.test", "/static", "Prefix", "web:80"),
            ],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    let s = &built.snapshot;
    assert_eq!(
        render(s)
            .iter()
            .map(|l| l.split(" -> ").next().unwrap_or_default().to_string())
            .collect::<Vec<_>>(),
        [
            "other.test",
            "  prefix /static",
            "r.test",
            "  exact /exact",
            "  regex /api(/|$)(.*)",
            "  regex /img.v1",
            "  regex /static",
        ]
    );
    let r = s.virtual_host("r.test");
    assert_eq!(
        routed(
            r,
            &[
                "/API/v1",
                "/api",
                "/apix",
                "/Static/a.css",
                "/staticx",
                "/img.v1/x",
                "/imgxv1",
                "/EXACT"
            ]
        ),
        [
            "/api(/|$)(.*)",
            "/api(/|$)(.*)",
            "-",
            "/static",
            "-",
            "/img.v1",
            "-",
            "-"
        ]
    );
    let (path, target) = r.route_with_path("/api/users").unwrap();
    assert_eq!(target.policy.rewrite_target.as_deref(), Some("/$2"));
    let PathMatch::Regex(rp) = path.unwrap() else {
        panic!("a regex path")
    };
    let caps = rp.regex.captures("/api/users").unwrap();
    assert_eq!(&caps[2], "users");
    // The other host keeps element-wise prefixes.
    assert_eq!(
        routed(s.virtual_host("other.test"), &["/static/x", "/staticx"]),
        ["/static", "-"]
    );
}

// ---------------------------------------------------------------------------------------------
// Canary and conflicts
// ---------------------------------------------------------------------------------------------

#[test]
fn canary_attaches_to_the_main_route() {
    let canary = [
        ("canary", "true"),
        ("canary-by-cookie", "beta"),
        ("canary-weight", "25"),
    ];
    let yaml = [
        SERVICES,
        &ingress("main", &[], &[("c.test", "/", "Prefix", "web:80")]),
        &ingress(
            "canary",
            &canary,
            &[
                ("c.test", "/", "Prefix", "api:80"),
                ("c.test", "/nomain", "Prefix", "api:80"),
            ],
        ),
        &ingress(
            "second-canary",
            &canary,
            &[("c.test", "/", "Prefix", "api:80")],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(
        texts(&built.warnings),
        [
            "manifests.yaml (document 6): Ingress default/canary: canary: host c.test path /nomain is served by no other Ingress; ignored",
            "manifests.yaml (document 7): Ingress default/second-canary: canary: host c.test path / already has canary Ingress default/canary; ignored",
        ]
    );
    assert_eq!(
        render(&built.snapshot),
        [
            "c.test",
            "  prefix / -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/main canary default/canary",
        ]
    );
    let target = built.snapshot.virtual_host("c.test").route("/").unwrap();
    let c = target.canary.as_ref().unwrap();
    assert_eq!(c.rule.by_cookie.as_deref(), Some("beta"));
    assert_eq!((c.rule.weight, c.rule.weight_total), (25, 100));
    assert_eq!(c.backend.endpoints, ["10.2.0.1:8080".parse().unwrap()]);
}

#[test]
fn conflicts_go_to_the_oldest_ingress() {
    let stamped = |name: &str, stamp: &str, service: &str| {
        ingress(name, &[], &[("x.test", "/y", "Prefix", service)]).replace(
            &format!("  name: {name}\n"),
            &format!("  name: {name}\n  creationTimestamp: \"{stamp}\"\n"),
        )
    };
    let yaml = [
        SERVICES,
        &stamped("aaa-new", "2024-05-01T00:00:00Z", "web:80"),
        &stamped("zzz-old", "2023-01-01T00:00:00Z", "api:80"),
        // Same path, other type: another location, no conflict.
        &ingress("exact", &[], &[("x.test", "/y", "Exact", "web:80")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(
        texts(&built.warnings),
        ["manifests.yaml (document 5): Ingress default/aaa-new: host x.test path /y is already served by Ingress default/zzz-old"]
    );
    assert_eq!(
        render(&built.snapshot),
        [
            "x.test",
            "  exact /y -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/exact",
            "  prefix /y -> default/api:80 [10.2.0.1:8080] by default/zzz-old",
        ]
    );
    // Without timestamps: namespace/name order.
    let yaml = [
        SERVICES,
        &ingress("b", &[], &[("", "/y", "Prefix", "web:80")]),
        &ingress("a", &[], &[("", "/y", "Prefix", "api:80")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(
        texts(&built.warnings),
        ["manifests.yaml (document 5): Ingress default/b: host _ path /y is already served by Ingress default/a"]
    );
}

#[test]
fn default_backend_of_the_oldest_ingress() {
    let with_default = |name: &str, service: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}}}\n\
             spec:\n  defaultBackend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n  \
             rules:\n    - host: {name}.test\n      http:\n        paths:\n          - \
             {{path: /only, pathType: Exact, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        )
    };
    let yaml = [
        SERVICES,
        &with_default("b", "web"),
        &with_default("a", "api"),
        &ingress("c", &[], &[("", "/x", "Prefix", "web:80")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    let s = &built.snapshot;
    assert_eq!(
        render(s),
        [
            "a.test",
            "  exact /only -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/a",
            "  default -> default/api:80 [10.2.0.1:8080] by default/a",
            "b.test",
            "  exact /only -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/b",
            "  default -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/b",
            // Only an Ingress without rules sets the catch-all's default (ingress-nginx).
            "_",
            "  prefix /x -> default/web:80 [10.1.0.1:8080 10.1.0.2:8080] by default/c",
        ]
    );
    assert!(s.virtual_host("nowhere.test").route("/z").is_none());
}

// ---------------------------------------------------------------------------------------------
// Annotations
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_annotation_keeps_the_previous_version() {
    let good = [
        SERVICES,
        &ingress(
            "web",
            &[("proxy-read-timeout", "30")],
            &[("w.test", "/", "Prefix", "web:80")],
        ),
    ]
    .concat();
    let first = build(&good);
    assert_eq!(texts(&first.problems), NONE);

    // Edited badly, and the endpoints changed meanwhile.
    let bad = [
        &SERVICES.replace("10.1.0.2", "10.1.0.7"),
        ingress(
            "web",
            &[("proxy-read-timeout", "3x")],
            &[("w.test", "/new", "Prefix", "web:80")],
        )
        .as_str(),
        &ingress(
            "fresh",
            &[("backend-protocol", "FCGI")],
            &[("f.test", "/", "Prefix", "web:80")],
        ),
    ]
    .concat();
    let second = build_with(&bad, &classless(), Some(&first.snapshot));
    assert_eq!(
        texts(&second.problems),
        [
            "manifests.yaml (document 5): Ingress default/web: metadata.annotations[nginx.ingress.kubernetes.io/proxy-read-timeout]: \"3x\" is not a number of seconds",
            "manifests.yaml (document 6): Ingress default/fresh: metadata.annotations[nginx.ingress.kubernetes.io/backend-protocol]: \"FCGI\": unknown backend protocol (rvs speaks HTTP, HTTPS, GRPC, GRPCS and HTTP2)",
        ]
    );
    let s = &second.snapshot;
    assert_eq!(s.version, 2);
    // The last good `web`, against the current endpoints; `fresh` had nothing to keep.
    assert_eq!(
        render(s),
        [
            "w.test",
            "  prefix / -> default/web:80 [10.1.0.1:8080 10.1.0.7:8080] by default/web",
        ]
    );
    let target = s.virtual_host("w.test").route("/").unwrap();
    assert_eq!(target.policy.read_timeout, Duration::from_secs(30));
    assert!(Arc::ptr_eq(&s.ingresses[0], &first.snapshot.ingresses[0]));
}

#[test]
fn snippets_refuse_the_ingress() {
    let yaml = [
        SERVICES,
        &ingress(
            "web",
            &[("configuration-snippet", "more_set_headers \"X: y\";")],
            &[("w.test", "/", "Prefix", "web:80")],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(
        texts(&built.problems),
        ["manifests.yaml (document 5): Ingress default/web: annotation configuration-snippet: refused: rvs never executes configuration text"]
    );
    assert_eq!(served(&built), NONE);
}

#[test]
fn unsupported_annotations_are_warned_and_served() {
    let yaml = [
        SERVICES,
        &ingress(
            "web",
            &[
                ("mirror-target", "http://mirror.test"),
                ("backend-protocol", "GRPC"),
                ("limit-rps", "5"),
            ],
            &[("w.test", "/", "Prefix", "web:80")],
        ),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(
        texts(&built.warnings),
        ["manifests.yaml (document 5): Ingress default/web: annotation mirror-target: not supported by rvs; ignored"]
    );
    let target = built.snapshot.virtual_host("w.test").route("/").unwrap();
    assert_eq!(target.policy.backend_protocol, BackendProtocol::Grpc);
    assert_eq!(target.policy.limits.rps, Some(5));
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

const CERT: &str = "-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n";
const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\\nMHcC\\n-----END EC PRIVATE KEY-----\\n";

fn secret(name: &str, kind: &str, data: &[(&str, &str)]) -> String {
    let data: Vec<String> = data.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: {kind}\n\
         stringData: {{{}}}\n",
        data.join(", ")
    )
}

fn tls_ingress(name: &str, hosts: &[&str], secret: &str) -> String {
    let rules: Vec<(&str, &str, &str, &str)> = hosts
        .iter()
        .map(|h| (*h, "/", "Prefix", "web:80"))
        .collect();
    let mut text = ingress(name, &[], &rules);
    text.push_str(&format!(
        "  tls:\n    - hosts: [{}]\n      secretName: {secret}\n",
        hosts
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    text
}

#[test]
fn tls_secrets() {
    let good = [("tls.crt", CERT), ("tls.key", KEY)];
    let yaml = [
        SERVICES,
        &secret("good", "kubernetes.io/tls", &good),
        &secret("opaque", "Opaque", &good),
        &secret("nokey", "kubernetes.io/tls", &[("tls.crt", CERT)]),
        &secret(
            "notpem",
            "kubernetes.io/tls",
            &[("tls.crt", "MIIB"), ("tls.key", KEY)],
        ),
        &tls_ingress("a", &["a.test", "*.wild.test"], "good"),
        &tls_ingress("b", &["b.test"], "good"),
        &tls_ingress("missing", &["m.test"], "nope"),
        &tls_ingress("opaque", &["o.test"], "opaque"),
        &tls_ingress("nokey", &["k.test"], "nokey"),
        &tls_ingress("notpem", &["p.test"], "notpem"),
        &ingress("plain", &[], &[("plain.test", "/", "Prefix", "web:80")]),
    ]
    .concat();
    let built = build(&yaml);
    // Served with the default certificate until the Secret is right (as ingress-nginx).
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(
        texts(&built.warnings),
        [
            "manifests.yaml (document 11): Ingress default/missing: spec.tls[0].secretName: Secret default/nope not found; the default certificate serves its hosts",
            "manifests.yaml (document 12): Ingress default/opaque: spec.tls[0].secretName: Secret default/opaque is of type \"Opaque\", not kubernetes.io/tls; the default certificate serves its hosts",
            "manifests.yaml (document 13): Ingress default/nokey: spec.tls[0].secretName: Secret default/nokey has no tls.key; the default certificate serves its hosts",
            "manifests.yaml (document 14): Ingress default/notpem: spec.tls[0].secretName: Secret default/notpem: tls.crt is not PEM (no -----BEGIN ...CERTIFICATE----- block); the default certificate serves its hosts",
        ]
    );
    let s = &built.snapshot;
    let hosts: Vec<String> = s
        .hosts
        .iter()
        .map(|vh| format!("{}{}", vh.host.get(), if vh.tls { " tls" } else { "" }))
        .collect();
    assert_eq!(
        hosts,
        [
            "a.test tls",
            "b.test tls",
            "k.test tls",
            "m.test tls",
            "o.test tls",
            "p.test tls",
            "plain.test",
            "*.wild.test tls"
        ]
    );
    assert_eq!(s.certificates.len(), 1);
    let cert = &s.certificates[0];
    assert_eq!(cert.secret.to_string(), "Secret default/good");
    assert_eq!(cert.hosts, ["*.wild.test", "a.test", "b.test"]);
    assert!(cert.key_pem.starts_with(b"-----BEGIN EC PRIVATE KEY-----"));
    assert!(matches!(s.hosts[7].host.get(), HostMatch::Wildcard(w) if w == ".wild.test"));
}

#[test]
fn a_kept_ingress_keeps_its_certificate() {
    let good = [("tls.crt", CERT), ("tls.key", KEY)];
    let first = build(
        &[
            SERVICES,
            &secret("good", "kubernetes.io/tls", &good),
            &tls_ingress("a", &["a.test"], "good"),
        ]
        .concat(),
    );
    assert_eq!(first.snapshot.certificates.len(), 1);
    // The Secret is gone: a warning, and the last good certificate stays.
    let second = build_with(
        &[SERVICES, &tls_ingress("a", &["a.test"], "good")].concat(),
        &classless(),
        Some(&first.snapshot),
    );
    assert_eq!(texts(&second.problems), NONE);
    assert_eq!(second.warnings.len(), 1);
    assert_eq!(second.snapshot.certificates, first.snapshot.certificates);
    assert!(second.snapshot.virtual_host("a.test").tls);
}

// ---------------------------------------------------------------------------------------------
// ConfigMap, hash and version
// ---------------------------------------------------------------------------------------------

#[test]
fn configmap_defaults_and_missing_configmap() {
    let options = GatewayOptions {
        configmap: Some(("ingress".into(), "rvs".into())),
        ..classless()
    };
    let web = ingress("web", &[], &[("w.test", "/", "Prefix", "web:80")]);
    let built = build_with(&[SERVICES, &web].concat(), &options, None);
    assert_eq!(
        texts(&built.problems),
        ["api: ConfigMap ingress/rvs: not found (named by --configmap); using the defaults"]
    );
    assert_eq!(*built.snapshot.settings, Default::default());

    let cm = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: rvs, namespace: ingress}
data:
  proxy-read-timeout: "3x"
  proxy-send-timeout: "7"
  ssl-redirect: "false"
  server-tokens: "false"
"#;
    let built = build_with(&[SERVICES, cm, &web].concat(), &options, None);
    assert_eq!(
        texts(&built.problems),
        ["manifests.yaml (document 5): ConfigMap ingress/rvs: data[proxy-read-timeout]: \"3x\" is not a number of seconds"]
    );
    assert_eq!(
        texts(&built.warnings),
        ["manifests.yaml (document 5): ConfigMap ingress/rvs: data[server-tokens]: not supported by rvs; ignored"]
    );
    let policy = &built
        .snapshot
        .virtual_host("w.test")
        .route("/")
        .unwrap()
        .policy;
    assert_eq!(policy.read_timeout, Duration::from_secs(60));
    assert_eq!(policy.send_timeout, Duration::from_secs(7));
    assert!(!policy.ssl_redirect);
}

#[test]
fn config_hash_ignores_endpoints_and_version_counts() {
    let web = |timeout: &str| {
        ingress(
            "web",
            &[("proxy-read-timeout", timeout)],
            &[("w.test", "/", "Prefix", "web:80")],
        )
    };
    let first = build(&[SERVICES, &web("30")].concat());
    let same = build_with(
        &[SERVICES, &web("30")].concat(),
        &classless(),
        Some(&first.snapshot),
    );
    assert_eq!(first.snapshot.config_hash, same.snapshot.config_hash);
    assert_eq!((first.snapshot.version, same.snapshot.version), (1, 2));
    let moved = build(
        &[
            &SERVICES.replace("10.1.0.2", "10.1.0.3"),
            web("30").as_str(),
        ]
        .concat(),
    );
    assert_eq!(first.snapshot.config_hash, moved.snapshot.config_hash);
    let changed = build(&[SERVICES, &web("31")].concat());
    assert_ne!(first.snapshot.config_hash, changed.snapshot.config_hash);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,5}"
}

fn prefix_path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

proptest! {
    /// `Prefix` is element-wise: `p` matches `p`, `p/` and `p/...`, never `p` + more of the
    /// last element.
    #[test]
    fn element_wise_prefix(
        p in prefix_path(),
        rest in "[a-z/]{0,8}",
        extra in segment(),
        slash in any::<bool>()
    ) {
        let written = if slash && p != "/" { format!("{p}/") } else { p.clone() };
        let path = PathMatch::Prefix { path: written, element_wise: true };
        let base = p.trim_end_matches('/');
        let with_slash = format!("{base}/");
        let deeper = format!("{base}/{rest}");
        let longer = format!("{base}{extra}");
        prop_assert!(path.matches(&p));
        prop_assert!(path.matches(&with_slash));
        prop_assert!(path.matches(&deeper));
        if !base.is_empty() {
            prop_assert!(!path.matches(&longer));
        }
    }

    /// `*.suffix` matches exactly one more label.
    #[test]
    fn wildcard_hosts(
        label in "[a-z0-9]{1,8}",
        sub in "[a-z0-9]{1,8}",
        suffix in "[a-z]{1,6}\\.[a-z]{2,3}"
    ) {
        let wild = HostMatch::Wildcard(format!(".{suffix}"));
        let one = format!("{label}.{suffix}");
        let two = format!("{sub}.{label}.{suffix}");
        let glued = format!("{label}{suffix}");
        prop_assert!(wild.matches(&one));
        prop_assert!(!wild.matches(&suffix));
        prop_assert!(!wild.matches(&two));
        prop_assert!(!wild.matches(&glued));
    }

    /// The route chosen for a request is the longest element-wise prefix that matches it, as
    /// the Ingress spec wants, whatever the order of the rules.
    #[test]
    fn longest_prefix_wins(paths in prop::collection::btree_set(prefix_path(), 1..6), request in prefix_path()) {
        let rules: Vec<(&str, &str, &str, &str)> =
            paths.iter().map(|p| ("p.test", p.as_str(), "Prefix", "web:80")).collect();
        let built = build(&[SERVICES, &ingress("p", &[], &rules)].concat());
        prop_assert!(built.problems.is_empty());
        let vh = built.snapshot.virtual_host("p.test");
        let chosen = vh.route(&request).map(|t| t.path.clone());
        let expected = paths
            .iter()
            .filter(|p| {
                let base = p.trim_end_matches('/');
                base.is_empty() || request == base || request.starts_with(&format!("{base}/"))
            })
            .max_by_key(|p| p.len())
            .cloned();
        prop_assert_eq!(chosen, expected);
    }
}

#[test]
fn tls_and_defaults_only_from_the_owner_of_a_host() {
    let good = [("tls.crt", CERT), ("tls.key", KEY)];
    // Ingress "zz" (newer) names a.test in spec.tls without a rule for it, and adds a rule
    // plus a defaultBackend to b.test, which "a" (older) created.
    let hijack = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: zz, creationTimestamp: \"2026-02-01T00:00:00Z\"}\n\
         spec:\n  defaultBackend: {service: {name: api, port: {number: 80}}}\n  \
         tls:\n    - hosts: [a.test]\n      secretName: other\n  \
         rules:\n    - host: b.test\n      http:\n        paths:\n          - \
         {path: /zz, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}\n";
    // Older than zz by name order (no timestamp sorts first).
    let owner = tls_ingress("a", &["a.test", "b.test"], "good");
    let yaml = [
        SERVICES,
        &secret("good", "kubernetes.io/tls", &good),
        &secret("other", "kubernetes.io/tls", &good),
        &owner,
        hijack,
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    let s = &built.snapshot;
    let secrets: Vec<String> = s
        .certificates
        .iter()
        .map(|c| format!("{} {:?}", c.secret, c.hosts))
        .collect();
    assert_eq!(secrets, ["Secret default/good [\"a.test\", \"b.test\"]"]);
    assert!(
        s.virtual_host("b.test").default_route.is_none(),
        "zz cannot take over b.test's unmatched paths"
    );
    assert!(s.default_host.default_route.is_none());
}

#[test]
fn headless_service_backends_come_from_its_slices() {
    let headless = r#"
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, targetPort: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-a, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
  - addresses: [10.3.0.2]
  - addresses: [10.3.0.1]
  - addresses: [10.3.0.9]
    conditions: {ready: false, serving: true, terminating: true}
"#;
    let yaml = [
        SERVICES,
        headless,
        &ingress("db", &[], &[("db.test", "/", "Prefix", "db:pg")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), NONE);
    assert_eq!(texts(&built.warnings), NONE);
    let endpoints = endpoints_of(&built, "db.test", "/");
    assert_eq!(
        endpoints,
        ["10.3.0.1:5432", "10.3.0.2:5432"],
        "ready ones only"
    );
    // With none ready, the serving terminating one takes the traffic.
    let only_terminating =
        headless.replace("  - addresses: [10.3.0.2]\n  - addresses: [10.3.0.1]\n", "");
    let yaml = [
        SERVICES,
        &only_terminating,
        &ingress("db", &[], &[("db.test", "/", "Prefix", "db:5432")]),
    ]
    .concat();
    let built = build(&yaml);
    let endpoints = endpoints_of(&built, "db.test", "/");
    assert_eq!(endpoints, ["10.3.0.9:5432"]);
}

/// `from-to-www-redirect` adds the other name of each host as a redirect-only virtual host,
/// except where an Ingress serves that name (it keeps its routes, and only those).
#[test]
fn from_to_www_redirect_adds_only_free_names() {
    let yaml = [
        ingress(
            "shop",
            &[("from-to-www-redirect", "true")],
            &[
                ("www.shop.example", "/", "Prefix", "web"),
                ("taken.example", "/", "Prefix", "web"),
            ],
        ),
        ingress("taken", &[], &[("www.taken.example", "/", "Prefix", "web")]),
    ]
    .concat();
    let built = build(&yaml);
    assert_eq!(texts(&built.problems), Vec::<String>::new());
    let alias = built.snapshot.virtual_host("shop.example");
    assert_eq!(alias.routes.len(), 1);
    let redirect = alias.routes[0]
        .target
        .policy
        .redirect
        .as_ref()
        .expect("redirect");
    assert_eq!(redirect.status, 308);
    assert_eq!(
        redirect.location.parts,
        [
            TemplatePart::Scheme,
            TemplatePart::Literal("://www.shop.example".into()),
            TemplatePart::RequestUri
        ]
    );
    let kept = built.snapshot.virtual_host("www.taken.example");
    assert_eq!(
        kept.routes.len(),
        1,
        "no redirect route beside the served one"
    );
    assert_eq!(kept.routes[0].target.ingress.name, "taken");
    assert!(kept.routes[0].target.policy.redirect.is_none());
    // Without the annotation, no other names.
    let plain = build(&ingress(
        "p",
        &[],
        &[("www.p.example", "/", "Prefix", "web")],
    ));
    assert!(plain.snapshot.virtual_host("p.example").routes.is_empty());
}

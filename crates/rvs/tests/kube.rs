//! `rvs run --kube` against an in-process API server answering with recorded Kubernetes
//! JSON (tests/fixtures/kube): every change must reach the data plane, checked with real
//! traffic through the userspace engine and the gateway on loopback.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rvs_fakeapi::{as_new, fixture, list_items, FakeApi};
use serde_json::{json, Value};

fn service(name: &str, vip: SocketAddr) -> Value {
    let mut s = as_new(fixture("service-web.json"));
    s["metadata"]["name"] = json!(name);
    s["spec"]["clusterIP"] = json!(vip.ip().to_string());
    s["spec"]["clusterIPs"] = json!([vip.ip().to_string()]);
    s["spec"]["ports"][0]["port"] = json!(vip.port());
    s
}

/// The Service's EndpointSlice with ready endpoints at these addresses, all on `port`.
fn slice(service: &str, addresses: &[&str], port: u16) -> Value {
    let mut s = as_new(fixture("endpointslice-web.json"));
    s["metadata"]["name"] = json!(format!("{service}-abcde"));
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(service);
    let template = s["endpoints"][0].clone();
    s["endpoints"] = Value::Array(
        addresses
            .iter()
            .map(|a| {
                let mut e = template.clone();
                e["addresses"] = json!([a]);
                e
            })
            .collect(),
    );
    s["ports"][0]["port"] = json!(port);
    s
}

fn ingress(path: &str, annotations: &[(&str, &str)]) -> Value {
    let mut i = as_new(fixture("ingress-web.json"));
    i["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!(path);
    // The recorded Ingress has TLS; plain-text requests would get the 308 to HTTPS.
    i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"] = json!("false");
    for (k, v) in annotations {
        i["metadata"]["annotations"][*k] = json!(v);
    }
    i
}

/// The fake API on its own runtime, so the tests can block.
fn fake_api() -> (tokio::runtime::Runtime, FakeApi) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = rt.block_on(FakeApi::start()).unwrap();
    (rt, api)
}

fn loopback(last: u8) -> String {
    format!("127.0.0.{last}")
}

struct Cluster {
    _rt: tokio::runtime::Runtime,
    api: FakeApi,
    _dir: tempfile::TempDir,
    rvs: Proc,
    admin: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
    vip: SocketAddr,
    backend_port: u16,
    _backends: Vec<Proc>,
}

/// The fixtures on the fake API (one Service with two ready endpoints, its Ingress, TLS
/// Secret, IngressClass, ConfigMap, Node), two echo backends, and rvs watching it.
fn cluster(extra_args: &[&str]) -> Cluster {
    let (rt, api) = fake_api();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    let backend_port = free_port();
    let vip: SocketAddr = format!("127.77.0.1:{}", free_port()).parse().unwrap();
    let backends = vec![
        echo_backend("pod-a", &format!("{}:{backend_port}", loopback(2))),
        echo_backend("pod-b", &format!("{}:{backend_port}", loopback(3))),
    ];
    api.put(fixture("ingressclass-rvs.json"));
    api.put(fixture("configmap-rvs.json"));
    api.put(fixture("node-worker-1.json"));
    api.put(fixture("secret-web-tls.json"));
    api.put(service("web", vip));
    api.put(slice("web", &["127.0.0.2", "127.0.0.3"], backend_port));
    api.put(ingress("/", &[]));
    for pod in list_items(&fixture("pod-list-rvs.json"), "Pod", "v1") {
        api.put(pod);
    }

    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        "run".to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--admin".into(),
        admin.to_string(),
        "--http-listen".into(),
        http.to_string(),
        "--https-listen".into(),
        https.to_string(),
        "--configmap".into(),
        "rvs-system/rvs-config".into(),
        "--node-name".into(),
        "worker-1".into(),
        "--access-log".into(),
        "off".into(),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let rvs = Proc(
        Command::new(RVS)
            .args(&args)
            .env("RVS_LOG", "info")
            .env("POD_NAME", "rvs-test-1")
            .env("POD_NAMESPACE", "rvs-system")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_ready(admin);
    Cluster {
        _rt: rt,
        api,
        _dir: dir,
        rvs,
        admin,
        http,
        https,
        vip,
        backend_port,
        _backends: backends,
    }
}

/// Who answered 20 requests through the virtual service (sorted, unique).
fn answering(vip: SocketAddr) -> Vec<String> {
    let mut seen: Vec<String> = (0..20).filter_map(|_| who(vip)).collect();
    seen.sort();
    seen.dedup();
    seen
}

fn gateway(c: &Cluster, path: &str) -> Option<u16> {
    http_get_host(c.http, path, "shop.example.com").map(|(status, _)| status)
}

const CHANGE: Duration = Duration::from_secs(10);

#[test]
fn every_kind_of_change_reaches_the_data_plane() {
    let c = cluster(&[]);

    // Initial sync: the Service and the gateway route serve both pods.
    eventually(
        "both endpoints answer through the ClusterIP",
        CHANGE,
        || answering(c.vip) == ["pod-a", "pod-b"],
    );
    assert_eq!(gateway(&c, "/"), Some(200));

    // The leader (the only instance) holds the lease and writes the Ingress status.
    // The gateway pods' host IPs (the recorded DaemonSet pods).
    eventually("Ingress status written", CHANGE, || {
        c.api.get("Ingress", "shop", "web").is_some_and(|i| {
            i["status"]["loadBalancer"]["ingress"]
                == json!([{"ip": "192.168.10.11"}, {"ip": "192.168.10.12"}])
        })
    });
    let lease = c.api.get("Lease", "rvs-system", "rvs-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "rvs-test-1");

    // EndpointSlice MODIFIED: pod-b scaled away.
    c.api.put(slice("web", &["127.0.0.2"], c.backend_port));
    eventually("only pod-a answers", CHANGE, || {
        answering(c.vip) == ["pod-a"]
    });

    // Service and EndpointSlice ADDED.
    let vip2: SocketAddr = format!("127.77.0.2:{}", free_port()).parse().unwrap();
    c.api.put(service("web2", vip2));
    c.api.put(slice("web2", &["127.0.0.3"], c.backend_port));
    eventually("the new Service answers", CHANGE, || {
        answering(vip2) == ["pod-b"]
    });

    // Service DELETED: its address stops accepting.
    assert!(c.api.delete("Service", "shop", "web2"));
    eventually("the deleted Service is gone", CHANGE, || {
        TcpStream::connect_timeout(&vip2, Duration::from_millis(300)).is_err()
    });

    // Ingress MODIFIED: the route moves.
    c.api.put(ingress("/shop", &[]));
    eventually("the route moved to /shop", CHANGE, || {
        gateway(&c, "/") == Some(404) && gateway(&c, "/shop") == Some(200)
    });

    // A bad edit is refused with the object and field named; the last good one serves.
    c.api.put(ingress(
        "/",
        &[("nginx.ingress.kubernetes.io/proxy-read-timeout", "3x")],
    ));
    eventually("the bad Ingress is reported", CHANGE, || {
        http_get(c.admin, "/api/v1/config").is_some_and(|(_, body)| {
            body.contains("Ingress shop/web") && body.contains("proxy-read-timeout")
        })
    });
    assert_eq!(gateway(&c, "/shop"), Some(200));
    assert_eq!(gateway(&c, "/"), Some(404));
    // Fixed: the problem goes away.
    c.api.put(ingress("/shop", &[]));
    eventually("the fixed Ingress is accepted", CHANGE, || {
        http_get(c.admin, "/api/v1/config")
            .is_some_and(|(_, body)| !body.contains("proxy-read-timeout"))
    });

    // ConfigMap MODIFIED: a global setting the gateway shows in its config hash.
    let hash = |c: &Cluster| {
        http_get(c.admin, "/metrics").and_then(|(_, m)| {
            m.lines()
                .find(|l| l.starts_with("nginx_ingress_controller_config_hash"))
                .map(str::to_string)
        })
    };
    let before = hash(&c);
    let mut cm = c.api.get("ConfigMap", "rvs-system", "rvs-config").unwrap();
    cm["data"]["proxy-connect-timeout"] = json!("7");
    c.api.put(cm);
    eventually("the ConfigMap change is applied", CHANGE, || {
        hash(&c) != before
    });

    // Secret MODIFIED: the certificate served for the host is rotated.
    let subject = |c: &Cluster| {
        let out = Command::new("curl")
            .args(["-skv", "-o", "/dev/null", "--resolve"])
            .arg(format!("shop.example.com:{}:127.0.0.1", c.https.port()))
            .arg(format!("https://shop.example.com:{}/shop", c.https.port()))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("subject:"))
            .map(|l| l.trim().to_string())
    };
    let recorded = subject(&c).expect("curl shows the certificate's subject");
    assert!(recorded.contains("CN=shop.example.com"), "{recorded}");
    let rotated = rcgen::generate_simple_self_signed(vec!["shop.example.com".to_string()]).unwrap();
    let mut secret = c.api.get("Secret", "shop", "web-tls").unwrap();
    let b64 = |pem: String| {
        Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(pem.as_bytes())?;
                child.wait_with_output()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap()
    };
    secret["data"]["tls.crt"] = json!(b64(rotated.cert.pem()));
    secret["data"]["tls.key"] = json!(b64(rotated.signing_key.serialize_pem()));
    c.api.put(secret);
    eventually("the rotated certificate is served", CHANGE, || {
        subject(&c).is_some_and(|s| s != recorded)
    });

    // IngressClass MODIFIED: another controller's class is not served any more.
    let mut class = c.api.get("IngressClass", "", "rvs").unwrap();
    class["spec"]["controller"] = json!("k8s.io/ingress-nginx");
    c.api.put(class.clone());
    eventually("the Ingress of a foreign class is dropped", CHANGE, || {
        gateway(&c, "/shop") == Some(404)
    });
    class["spec"]["controller"] = json!("rvs.io/ingress-controller");
    c.api.put(class);
    eventually("served again", CHANGE, || gateway(&c, "/shop") == Some(200));

    // Ingress DELETED.
    assert!(c.api.delete("Ingress", "shop", "web"));
    eventually("the deleted Ingress no longer routes", CHANGE, || {
        gateway(&c, "/shop") == Some(404)
    });

    // Every applied event was timed.
    let (_, metrics) = http_get(c.admin, "/metrics").unwrap();
    let count = metrics
        .lines()
        .find(|l| l.starts_with("rvs_kube_event_to_applied_seconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count >= 8.0, "events timed: {count}\n{metrics}");
    // The leader renews its lease every 2 s.
    eventually("the lease renewed", CHANGE, || {
        c.api.requests().iter().any(|r| {
            r.starts_with(
                "PUT /apis/coordination.k8s.io/v1/namespaces/rvs-system/leases/rvs-leader",
            )
        })
    });
    drop(c.rvs);

    assert_least_privilege(&c.api);
}

/// A request as RBAC sees it.
struct Access {
    group: String,
    resource: String,
    verb: &'static str,
    namespace: Option<String>,
    name: Option<String>,
}

/// A request logged by the fake API as `METHOD /path?query`.
fn access(request: &str) -> Access {
    let (method, target) = request.split_once(' ').unwrap();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments[0] {
        "api" => ("", &segments[2..]),
        _ => (segments[1], &segments[3..]),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let resource = match rest {
        [r, _, sub] => format!("{r}/{sub}"),
        [r, ..] => r.to_string(),
        [] => panic!("no resource in {request}"),
    };
    let field_name = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector=metadata.name%3D"))
        .map(str::to_string);
    let (verb, name) = match (method, rest.len()) {
        ("GET", 1) if query.contains("watch=true") => ("watch", field_name),
        ("GET", 1) => ("list", field_name),
        ("GET", _) => ("get", Some(rest[1].to_string())),
        ("POST", _) => ("create", None),
        ("PUT", _) => ("update", Some(rest[1].to_string())),
        _ => panic!("unexpected request {request}"),
    };
    Access {
        group: group.to_string(),
        resource,
        verb,
        namespace,
        name,
    }
}

/// The rules of the `rvs` ClusterRole, and of the `rvs` Role with its namespace.
fn rvs_rules() -> Vec<(Option<String>, serde_yaml::Value)> {
    let rbac = std::fs::read_to_string(repo_root().join("deploy/10-rbac.yaml")).unwrap();
    let mut rules = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rbac) {
        let role: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        let namespace = match role["kind"].as_str() {
            Some("ClusterRole") => None,
            Some("Role") => role["metadata"]["namespace"].as_str().map(str::to_string),
            _ => continue,
        };
        if role["metadata"]["name"] != "rvs" {
            continue;
        }
        for rule in role["rules"].as_sequence().into_iter().flatten() {
            rules.push((namespace.clone(), rule.clone()));
        }
    }
    rules
}

fn listed(rule: &serde_yaml::Value, key: &str) -> Vec<String> {
    rule[key]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn allows(scope: &Option<String>, rule: &serde_yaml::Value, a: &Access) -> bool {
    let names = listed(rule, "resourceNames");
    (scope.is_none() || scope == &a.namespace)
        && listed(rule, "apiGroups").contains(&a.group)
        && listed(rule, "resources").contains(&a.resource)
        && listed(rule, "verbs").iter().any(|v| v == a.verb)
        && (names.is_empty() || a.name.as_ref().is_some_and(|n| names.contains(n)))
}

/// Everything rvs asked of the API is granted by deploy/10-rbac.yaml, and every verb granted
/// there was used. Periodic requests (the leader's lease renewal, every 2 s) may not have
/// happened yet when a test gets here: the check waits up to 20 s for them.
fn assert_least_privilege(api: &FakeApi) {
    let rules = rvs_rules();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let accesses: Vec<(String, Access)> = api
            .requests()
            .into_iter()
            .map(|r| {
                let a = access(&r);
                (r, a)
            })
            .collect();
        for (request, a) in &accesses {
            assert!(
                rules.iter().any(|(scope, rule)| allows(scope, rule, a)),
                "deploy/10-rbac.yaml does not allow: {request}"
            );
        }
        let unused: Vec<String> = rules
            .iter()
            .flat_map(|(scope, rule)| {
                let accesses = &accesses;
                listed(rule, "resources")
                    .into_iter()
                    .flat_map(move |resource| {
                        listed(rule, "verbs").into_iter().filter_map(move |verb| {
                            let used = accesses.iter().any(|(_, a)| {
                                a.resource == resource && a.verb == verb && allows(scope, rule, a)
                            });
                            (!used).then(|| format!("{verb} on {resource}"))
                        })
                    })
            })
            .collect();
        if unused.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "deploy/10-rbac.yaml grants {}, which rvs never uses",
            unused.join(", ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_thirty_second_outage_keeps_serving_then_converges() {
    let c = cluster(&[]);
    eventually("both endpoints answer", CHANGE, || {
        answering(c.vip) == ["pod-a", "pod-b"]
    });

    c.api.go_down();
    // Changes made while rvs cannot see them.
    c.api.put(slice("web", &["127.0.0.3"], c.backend_port));
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        assert_eq!(
            http_get(c.admin, "/readyz").map(|(s, _)| s),
            Some(200),
            "ready during the outage"
        );
        assert_eq!(
            answering(c.vip),
            ["pod-a", "pod-b"],
            "the last configuration serves"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    c._rt.block_on(c.api.come_back()).unwrap();
    // kube-rs's default watch backoff is capped at 30 s, and its jitter adds up to as much
    // again: the retry after the outage may come 60 s later, then the relist.
    eventually(
        "converged after the outage",
        Duration::from_secs(75),
        || answering(c.vip) == ["pod-b"],
    );
    let (_, metrics) = http_get(c.admin, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rvs_kube_watch_restarts_total{") && !l.ends_with(" 0")),
        "restarts counted:\n{metrics}"
    );
    assert_least_privilege(&c.api);
}

#[test]
fn the_webhook_denies_a_conflict_with_a_stored_ingress() {
    let (rt, api) = fake_api();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.write_kubeconfig(dir.path()).unwrap();
    api.put(fixture("ingressclass-rvs.json"));
    api.put(fixture("ingress-web.json"));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let _webhook = spawn(&[
        "webhook",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    let post = |review: &Value| -> Option<Value> {
        let file = dir.path().join("review.json");
        std::fs::write(&file, review.to_string()).ok()?;
        let out = Command::new("curl")
            .args(["-sk", "--fail", "-H", "Content-Type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("https://{listen}/validate-ingress"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    eventually("the webhook lists the stored Ingresses", CHANGE, || {
        Command::new("curl")
            .args(["-sk", "--fail"])
            .arg(format!("https://{listen}/readyz"))
            .output()
            .is_ok_and(|o| o.status.success())
    });

    // The recorded CREATE of shop/web: its own stored version does not conflict.
    let create = fixture("admission-review-create.json");
    let answer = post(&create).expect("an AdmissionReview answer");
    assert_eq!(answer["response"]["uid"], create["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // Another Ingress claiming the same host and path: denied with the gateway's message.
    let mut other = create.clone();
    other["request"]["name"] = json!("web-copy");
    other["request"]["object"]["metadata"]["name"] = json!("web-copy");
    other["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("creationTimestamp");
    let answer = post(&other).expect("an AdmissionReview answer");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Ingress shop/web-copy")
            && message.contains("already served by Ingress shop/web"),
        "{message}"
    );
    drop(rt);
}

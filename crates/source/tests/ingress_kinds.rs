//! `ManifestDir` reads the gateway's kinds: Ingress, IngressClass (cluster-scoped), Secret
//! (`stringData` merged into `data`) and ConfigMap, keeping their last good versions.

mod common;

use common::{texts, write};
use rvs_model::{ObjectSet, Origin};
use rvs_source::ManifestDir;

fn document(origin: &Origin) -> usize {
    match origin {
        Origin::File { document, .. } => *document,
        Origin::Api => panic!("a manifest object from the API"),
    }
}

/// `Kind namespace/name @ document`, with the first rule's host, the class's controller, the
/// Secret's keys and values or the ConfigMap's data.
fn listing(set: &ObjectSet) -> Vec<String> {
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "default".into());
    let mut out = Vec::new();
    for i in &set.ingresses {
        let host = i
            .object
            .spec
            .as_ref()
            .and_then(|s| s.rules.as_ref())
            .and_then(|r| r.first())
            .and_then(|r| r.host.clone())
            .unwrap_or_default();
        out.push(format!(
            "Ingress {}/{} {host} @ {}",
            ns(&i.object.metadata.namespace),
            i.object.metadata.name.as_deref().unwrap_or_default(),
            document(&i.origin)
        ));
    }
    for c in &set.ingress_classes {
        let controller = c
            .object
            .spec
            .as_ref()
            .and_then(|s| s.controller.clone())
            .unwrap_or_default();
        out.push(format!(
            "IngressClass {} {controller} @ {}",
            c.object.metadata.name.as_deref().unwrap_or_default(),
            document(&c.origin)
        ));
    }
    for s in &set.secrets {
        let data: Vec<String> = s
            .object
            .data
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(&v.0)))
            .collect();
        out.push(format!(
            "Secret {}/{} {} [{}] string_data={} @ {}",
            ns(&s.object.metadata.namespace),
            s.object.metadata.name.as_deref().unwrap_or_default(),
            s.object.type_.as_deref().unwrap_or_default(),
            data.join(" "),
            s.object.string_data.is_some(),
            document(&s.origin)
        ));
    }
    for c in &set.config_maps {
        let data: Vec<String> = c
            .object
            .data
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(format!(
            "ConfigMap {}/{} [{}] @ {}",
            ns(&c.object.metadata.namespace),
            c.object.metadata.name.as_deref().unwrap_or_default(),
            data.join(" "),
            document(&c.origin)
        ));
    }
    out
}

const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  ingressClassName: rvs
  rules:
    - host: HOST
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;

const CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: rvs, namespace: ignored}
spec: {controller: CONTROLLER}
"#;

// `data` is base64: tls.crt = "old-crt", tls.key = "old-key".
const SECRET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: web-tls, namespace: shop}
type: kubernetes.io/tls
data:
  tls.crt: b2xkLWNydA==
  tls.key: b2xkLWtleQ==
stringData:
  tls.key: new-key
  extra: plain
"#;

const CONFIG_MAP: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: rvs, namespace: ingress}
data:
  proxy-read-timeout: "120"
"#;

fn all(host: &str, controller: &str) -> String {
    [
        INGRESS.replace("HOST", host),
        CLASS.replace("CONTROLLER", controller),
        SECRET.to_string(),
        CONFIG_MAP.to_string(),
    ]
    .join("---\n")
}

#[test]
fn gateway_kinds_are_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "gateway.yaml",
        &all("a.example.com", "rvs.io/ingress-controller"),
    );
    let mut dir = ManifestDir::new(root);
    let (set, problems) = dir.load().unwrap();
    assert_eq!(texts(root, &problems), Vec::<String>::new());
    assert_eq!(
        listing(&set),
        [
            "Ingress shop/web a.example.com @ 0",
            "IngressClass rvs rvs.io/ingress-controller @ 1",
            // stringData merged into data, its keys winning; not kept on its own.
            "Secret shop/web-tls kubernetes.io/tls [extra=plain tls.crt=old-crt tls.key=new-key] string_data=false @ 2",
            "ConfigMap ingress/rvs [proxy-read-timeout=120] @ 3",
        ]
    );
}

#[test]
fn bad_versions_keep_the_last_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "gateway.yaml",
        &all("a.example.com", "rvs.io/ingress-controller"),
    );
    let mut dir = ManifestDir::new(root);
    dir.load().unwrap();

    // The Ingress's rules and the class's controller of the wrong type; the Secret's data not
    // base64: each keeps its last good version (the IngressClass by its cluster-wide name).
    let broken = [
        INGRESS.replace("rules:", "rules: 5\n  x:"),
        CLASS.replace("CONTROLLER", "[not, a, string]"),
        SECRET.replace("b2xkLWNydA==", "\"%%%\""),
        CONFIG_MAP.to_string(),
    ]
    .join("---\n");
    write(root, "gateway.yaml", &broken);
    let (set, problems) = dir.load().unwrap();
    let problems = texts(root, &problems);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("gateway.yaml: Ingress shop/web: not a valid Ingress: "));
    assert!(problems[1]
        .starts_with("gateway.yaml (document 2): IngressClass rvs: not a valid IngressClass: "));
    assert!(problems[2]
        .starts_with("gateway.yaml (document 3): Secret shop/web-tls: not a valid Secret: "));
    assert!(problems
        .iter()
        .all(|p| p.ends_with("; keeping its last good version")));
    assert_eq!(
        listing(&set),
        [
            "Ingress shop/web a.example.com @ 0",
            "IngressClass rvs rvs.io/ingress-controller @ 1",
            "Secret shop/web-tls kubernetes.io/tls [extra=plain tls.crt=old-crt tls.key=new-key] string_data=false @ 2",
            "ConfigMap ingress/rvs [proxy-read-timeout=120] @ 3",
        ]
    );

    // Fixed: the new versions.
    write(
        root,
        "gateway.yaml",
        &all("b.example.com", "other.io/controller"),
    );
    let (set, problems) = dir.load().unwrap();
    assert!(problems.is_empty());
    assert_eq!(listing(&set)[0], "Ingress shop/web b.example.com @ 0");
    assert_eq!(listing(&set)[1], "IngressClass rvs other.io/controller @ 1");
}

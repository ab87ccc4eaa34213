//! `ManifestDir` on real directories: formats, layout, last good objects; `watch_dir`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{texts, write};
use rvs_model::{
    BuildOptions, EndpointState, ObjectSet, Origin, RealServer, Snapshot, VirtualService,
};
use rvs_source::{watch_dir, ManifestDir};

fn service(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n"
    )
}

fn slice(name: &str, service: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [{ip}]}}]\n"
    )
}

/// An origin with the directory's path left off: `a.yaml (document 2)`.
fn origin(root: &Path, origin: &Origin) -> String {
    match origin {
        Origin::File { path, document } => Origin::File {
            path: path
                .strip_prefix(root)
                .expect("origin under the root")
                .to_path_buf(),
            document: *document,
        }
        .to_string(),
        Origin::Api => panic!("a manifest object from the API"),
    }
}

/// `Service default/web 10.96.0.10 @ a.yaml`, `EndpointSlice default/web-a 10.1.0.1 @ ...`:
/// the kind, namespace, name, the first address (to tell versions apart) and the origin.
fn listing(root: &Path, set: &ObjectSet) -> Vec<String> {
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "default".into());
    let mut out = Vec::new();
    for s in &set.services {
        let meta = &s.object.metadata;
        let ip = s
            .object
            .spec
            .as_ref()
            .and_then(|spec| spec.cluster_ip.clone())
            .unwrap_or_default();
        out.push(format!(
            "Service {}/{} {ip} @ {}",
            ns(&meta.namespace),
            meta.name.as_deref().unwrap_or_default(),
            origin(root, &s.origin)
        ));
    }
    for s in &set.endpoint_slices {
        let meta = &s.object.metadata;
        let ip = s
            .object
            .endpoints
            .first()
            .and_then(|e| e.addresses.first())
            .cloned()
            .unwrap_or_default();
        out.push(format!(
            "EndpointSlice {}/{} {ip} @ {}",
            ns(&meta.namespace),
            meta.name.as_deref().unwrap_or_default(),
            origin(root, &s.origin)
        ));
    }
    out
}

fn load(dir: &mut ManifestDir) -> (Vec<String>, Vec<String>) {
    let root = dir.root().to_path_buf();
    let (set, problems) = dir.load().expect("directory readable");
    (listing(&root, &set), texts(&root, &problems))
}

const NONE: [&str; 0] = [];

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

#[test]
fn multi_document_yaml() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Document 1 after a leading `---`, 2 empty, 3 a slice, 4 only a comment, 5 a Service.
    let text = format!(
        "---\n{}---\n---\n{}---\n# nothing here\n---\n{}",
        service("web", "10.96.0.10"),
        slice("web-a", "web", "10.1.0.1"),
        service("api", "10.96.0.20")
    );
    write(root, "a.yaml", &text);
    let mut dir = ManifestDir::new(root);
    assert_eq!(dir.root(), root);
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.10 @ a.yaml",
            "Service default/api 10.96.0.20 @ a.yaml (document 5)",
            "EndpointSlice default/web-a 10.1.0.1 @ a.yaml (document 3)",
        ]
    );
}

#[test]
fn json_files() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "spaces.json",
        r#"{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {"name": "dns", "namespace": "kube-system"},
  "spec": {"clusterIP": "10.96.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
}
"#,
    );
    // Tab indentation is not YAML, but is JSON.
    write(
        root,
        "tabs.json",
        "{\n\t\"apiVersion\": \"discovery.k8s.io/v1\",\n\t\"kind\": \"EndpointSlice\",\n\t\"metadata\": {\n\t\t\"name\": \"dns-a\",\n\t\t\"namespace\": \"kube-system\",\n\t\t\"labels\": {\"kubernetes.io/service-name\": \"dns\"}\n\t},\n\t\"addressType\": \"IPv4\",\n\t\"endpoints\": [{\"addresses\": [\"10.2.0.1\"]}]\n}\n",
    );
    write(root, "short.yml", &service("web", "10.96.0.10"));
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(problems, NONE);
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.10 @ short.yml",
            "Service kube-system/dns 10.96.0.53 @ spaces.json",
            "EndpointSlice kube-system/dns-a 10.2.0.1 @ tabs.json",
        ]
    );
}

#[test]
fn lists_are_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let indent = |text: String| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n  -\n{}  -\n{}  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: cm}}}}\n\
         ---\napiVersion: v1\nkind: ServiceList\nmetadata: {{resourceVersion: \"1\"}}\nitems:\n  -\n{}\
         ---\napiVersion: v1\nkind: List\nitems: []\n---\n{}",
        indent(service("web", "10.96.0.10")),
        indent(slice("web-a", "web", "10.1.0.1")),
        indent(service("api", "10.96.0.20")),
        service("db", "10.96.0.30"),
    );
    write(root, "list.yaml", &list);
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(problems, NONE);
    // The items of a List share their document's number.
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.10 @ list.yaml",
            "Service default/api 10.96.0.20 @ list.yaml (document 2)",
            "Service default/db 10.96.0.30 @ list.yaml (document 4)",
            "EndpointSlice default/web-a 10.1.0.1 @ list.yaml",
        ]
    );
}

#[test]
fn other_kinds_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "mixed.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec: {{replicas: 2}}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\ndata: {{a: b}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: web}}\n---\n{}",
            service("web", "10.96.0.10")
        ),
    );
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(problems, NONE);
    assert_eq!(
        objects,
        ["Service default/web 10.96.0.10 @ mixed.yaml (document 4)"]
    );
}

#[test]
fn documents_without_kind_or_name_are_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "odd.yaml",
        "just a string\n---\nfoo: bar\n---\napiVersion: v1\nkind: Service\nmetadata: {namespace: prod}\nspec: {clusterIP: 10.96.0.10}\n",
    );
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(objects, NONE);
    assert_eq!(
        problems,
        [
            "odd.yaml: has no kind",
            "odd.yaml (document 2): has no kind",
            "odd.yaml (document 3): metadata.name: missing",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

#[test]
fn nested_directories_and_hidden_files() {
    // The tempdir itself is hidden (`.tmpXXXX`): only what is under the root counts.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "top.yaml", &service("top", "10.96.0.1"));
    write(root, "a/b/deep.yaml", &service("deep", "10.96.0.2"));
    write(root, "a/slices.json", &slice("deep-a", "deep", "10.1.0.2"));
    write(root, ".git/config.yaml", &service("git", "10.96.0.3"));
    write(
        root,
        "a/.hidden/x.yaml",
        &service("hidden-dir", "10.96.0.4"),
    );
    write(root, "a/.x.yaml", &service("hidden-file", "10.96.0.5"));
    write(root, "a/x.yaml.swp", &service("swap", "10.96.0.6"));
    write(root, "a/x.yaml~", &service("backup", "10.96.0.7"));
    write(root, "notes.txt", "not: [yaml");
    write(root, "empty.yaml", "");
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(problems, NONE);
    assert_eq!(
        objects,
        [
            "Service default/deep 10.96.0.2 @ a/b/deep.yaml",
            "Service default/top 10.96.0.1 @ top.yaml",
            "EndpointSlice default/deep-a 10.1.0.2 @ a/slices.json",
        ]
    );
}

#[test]
fn missing_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = ManifestDir::new(&missing).load().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: cannot read the manifest directory: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Last good objects
// ---------------------------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_keeps_the_files_last_good_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "a.yaml",
        &format!(
            "{}---\n{}",
            service("web", "10.96.0.10"),
            slice("web-a", "web", "10.1.0.1")
        ),
    );
    write(root, "b.yaml", &service("api", "10.96.0.20"));
    let mut dir = ManifestDir::new(root);
    let (first, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(
        first,
        [
            "Service default/web 10.96.0.10 @ a.yaml",
            "Service default/api 10.96.0.20 @ b.yaml",
            "EndpointSlice default/web-a 10.1.0.1 @ a.yaml (document 2)",
        ]
    );

    // a.yaml breaks in its second document (the first is changed, but the file is not read);
    // b.yaml changes and is read.
    write(
        root,
        "a.yaml",
        &format!(
            "{}---\nendpoints: [unclosed\n",
            service("web", "10.96.0.11")
        ),
    );
    write(root, "b.yaml", &service("api", "10.96.0.21"));
    let (objects, problems) = load(&mut dir);
    assert_eq!(
        problems,
        ["a.yaml (document 2): not valid YAML or JSON: did not find expected ',' or ']' at line 7 column 1, \
          while parsing a flow sequence at line 6 column 12; keeping this file's last good objects"]
    );
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.10 @ a.yaml",
            "Service default/api 10.96.0.21 @ b.yaml",
            "EndpointSlice default/web-a 10.1.0.1 @ a.yaml (document 2)",
        ]
    );

    // Still broken (differently): still the last good objects.
    write(root, "a.yaml", "kind: Service\nmetadata: {name: web\n");
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("a.yaml: not valid YAML or JSON: "),
        "{problems:?}"
    );
    assert!(
        problems[0].ends_with("; keeping this file's last good objects"),
        "{problems:?}"
    );
    assert_eq!(objects[0], "Service default/web 10.96.0.10 @ a.yaml");
    assert_eq!(objects.len(), 3);

    // Fixed: the file as it is now.
    write(root, "a.yaml", &service("web", "10.96.0.12"));
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.12 @ a.yaml",
            "Service default/api 10.96.0.21 @ b.yaml"
        ]
    );
}

#[test]
fn yaml_syntax_error_in_a_new_file_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "good.yaml", &service("web", "10.96.0.10"));
    write(
        root,
        "new.yaml",
        &format!("{}---\nfoo: [\n", service("api", "10.96.0.20")),
    );
    let mut dir = ManifestDir::new(root);
    let (objects, problems) = load(&mut dir);
    assert_eq!(objects, ["Service default/web 10.96.0.10 @ good.yaml"]);
    assert_eq!(
        problems,
        ["new.yaml (document 2): not valid YAML or JSON: did not find expected node content at line 7 column 1, \
          while parsing a flow node"]
    );
    // A fresh ManifestDir remembers nothing either: last good objects are per ManifestDir.
    write(root, "good.yaml", "kind: [");
    let (objects, problems) = load(&mut ManifestDir::new(root));
    assert_eq!(objects, NONE);
    assert_eq!(problems.len(), 2);
}

#[test]
fn invalid_document_keeps_its_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root,
        "a.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service("web", "10.96.0.10"),
            service("api", "10.96.0.20"),
            slice("web-a", "web", "10.1.0.1")
        ),
    );
    let mut dir = ManifestDir::new(root);
    let (first, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(first.len(), 3);

    // web's port and the slice's endpoints no longer deserialize; api changes and is fine.
    let bad_web = service("web", "10.96.0.11").replace("port: 80", "port: eighty");
    let bad_slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                     metadata: {name: web-a, labels: {kubernetes.io/service-name: web}}\n\
                     addressType: IPv4\nendpoints: {addresses: [10.1.0.2]}\n";
    write(
        root,
        "a.yaml",
        &format!(
            "{bad_web}---\n{}---\n{bad_slice}",
            service("api", "10.96.0.21")
        ),
    );
    let (objects, problems) = load(&mut dir);
    assert_eq!(
        problems,
        [
            r#"a.yaml: Service default/web: not a valid Service: invalid type: string "eighty", expected i32; keeping its last good version"#,
            "a.yaml (document 3): EndpointSlice default/web-a: not a valid EndpointSlice: invalid type: map, \
             expected a sequence; keeping its last good version",
        ]
    );
    assert_eq!(
        objects,
        [
            "Service default/web 10.96.0.10 @ a.yaml",
            "Service default/api 10.96.0.21 @ a.yaml (document 2)",
            "EndpointSlice default/web-a 10.1.0.1 @ a.yaml (document 3)",
        ]
    );

    // Still invalid on the next load: still kept.
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems.len(), 2);
    assert_eq!(objects[0], "Service default/web 10.96.0.10 @ a.yaml");
    assert_eq!(
        objects[2],
        "EndpointSlice default/web-a 10.1.0.1 @ a.yaml (document 3)"
    );

    // Removed from the file: gone, even though its last version was kept.
    write(root, "a.yaml", &service("api", "10.96.0.21"));
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(objects, ["Service default/api 10.96.0.21 @ a.yaml"]);
}

#[test]
fn new_invalid_object_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "a.yaml", &service("web", "10.96.0.10"));
    let mut dir = ManifestDir::new(root);
    let (_, problems) = load(&mut dir);
    assert_eq!(problems, NONE);

    // A new object with no last good version, and an invalid one that is renamed: no
    // previous version of that name.
    let bad_api = service("api", "10.96.0.20").replace("port: 80", "port: [80]");
    let renamed = service("web2", "10.96.0.11").replace("port: 80", "port: x");
    write(root, "a.yaml", &format!("{renamed}---\n{bad_api}"));
    let (objects, problems) = load(&mut dir);
    assert_eq!(objects, NONE);
    assert_eq!(
        problems,
        [
            r#"a.yaml: Service default/web2: not a valid Service: invalid type: string "x", expected i32"#,
            "a.yaml (document 2): Service default/api: not a valid Service: invalid type: sequence, expected i32",
        ]
    );
}

#[test]
fn same_name_in_another_namespace_is_another_object() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "a.yaml", &service("web", "10.96.0.10"));
    let mut dir = ManifestDir::new(root);
    load(&mut dir);
    let bad = service("web", "10.96.0.11")
        .replace("{name: web}", "{name: web, namespace: prod}")
        .replace("port: 80", "port: x");
    write(root, "a.yaml", &bad);
    let (objects, problems) = load(&mut dir);
    assert_eq!(objects, NONE);
    assert_eq!(
        problems,
        [
            r#"a.yaml: Service prod/web: not a valid Service: invalid type: string "x", expected i32"#
        ]
    );
}

#[test]
fn deleting_a_file_removes_its_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(root, "a.yaml", &service("web", "10.96.0.10"));
    write(root, "sub/b.yaml", &service("api", "10.96.0.20"));
    write(root, "c.yaml", &service("db", "10.96.0.30"));
    let mut dir = ManifestDir::new(root);
    let (objects, _) = load(&mut dir);
    assert_eq!(objects.len(), 3);

    // c.yaml goes bad (its last good objects are kept) and is then deleted.
    write(root, "c.yaml", "kind: [");
    let (objects, problems) = load(&mut dir);
    assert_eq!(objects.len(), 3);
    assert_eq!(problems.len(), 1);

    std::fs::remove_file(root.join("c.yaml")).unwrap();
    std::fs::remove_dir_all(root.join("sub")).unwrap();
    let (objects, problems) = load(&mut dir);
    assert_eq!(problems, NONE);
    assert_eq!(objects, ["Service default/web 10.96.0.10 @ a.yaml"]);

    // Coming back is a new file: no memory of its old objects.
    write(root, "c.yaml", "kind: [");
    let (objects, problems) = load(&mut dir);
    assert_eq!(objects, ["Service default/web 10.96.0.10 @ a.yaml"]);
    assert_eq!(problems.len(), 1);
    assert!(!problems[0].contains("keeping"), "{problems:?}");
}

// ---------------------------------------------------------------------------------------------
// The fixture directory, end to end
// ---------------------------------------------------------------------------------------------

fn render(vs: &VirtualService) -> String {
    let server = |rs: &RealServer| {
        let state = if rs.state == EndpointState::Terminating {
            " terminating"
        } else {
            ""
        };
        format!("{} w{}/{}{state}", rs.addr, rs.weight, rs.configured_weight)
    };
    let servers: Vec<String> = vs.real_servers.iter().map(server).collect();
    format!(
        "{} {} {:?} {} [{}]",
        vs.protocol,
        vs.frontend,
        vs.kind,
        vs.service,
        servers.join(", ")
    )
}

#[test]
fn fixture_directory_to_snapshot() {
    let root: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/manifests");
    let mut dir = ManifestDir::new(&root);
    let (set, problems) = dir.load().unwrap();
    assert_eq!(texts(&root, &problems), NONE);
    assert_eq!(
        listing(&root, &set),
        [
            "Service kube-system/dns 10.96.0.53 @ dns.json",
            "Service shop/web 10.96.0.10 @ web.yaml",
            "EndpointSlice kube-system/dns-a 10.2.0.1 @ lists/dns-slices.yaml",
            "EndpointSlice shop/web-v4 10.1.0.1 @ web.yaml (document 2)",
            "EndpointSlice shop/web-v6 fd00:10::1 @ web.yaml (document 3)",
        ]
    );
    let (snapshot, problems) = Snapshot::build(&set, &BuildOptions::default(), None);
    assert_eq!(texts(&root, &problems), NONE);
    let table: Vec<String> = snapshot.services.iter().map(|vs| render(vs)).collect();
    assert_eq!(
        table,
        [
            "TCP 10.96.0.10:80 ClusterIp shop/web:http \
             [10.1.0.1:8080 w3/3, 10.1.0.2:8080 w1/1, 10.1.0.3:8080 w0/1 terminating]",
            "TCP 10.96.0.53:53 ClusterIp kube-system/dns:dns-tcp [10.2.0.1:5353 w1/1]",
            "TCP [fd00::10]:80 ClusterIp shop/web:http [[fd00:10::1]:8080 w3/3, [fd00:10::2]:8080 w0/0]",
            "TCP *:30080 NodePort shop/web:http \
             [10.1.0.1:8080 w3/3, 10.1.0.2:8080 w1/1, 10.1.0.3:8080 w0/1 terminating]",
            "TCP [*]:30080 NodePort shop/web:http [[fd00:10::1]:8080 w3/3, [fd00:10::2]:8080 w0/0]",
            "UDP 10.96.0.53:53 ClusterIp kube-system/dns:dns [10.2.0.1:5353 w1/1]",
        ]
    );
    let dns: Vec<_> = snapshot
        .services
        .iter()
        .filter(|vs| vs.service.name == "dns")
        .collect();
    assert_eq!(dns.len(), 2);
    assert!(dns
        .iter()
        .all(|vs| vs.persistence == Some(Duration::from_secs(600))));
}

// ---------------------------------------------------------------------------------------------
// Watching
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_signals_a_write_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir(root.join("sub")).unwrap();
    // A poll period far beyond the test: every signal comes from a change.
    let (_watcher, mut rx) =
        watch_dir(root, Duration::from_millis(50), Duration::from_secs(3600)).unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    assert!(quiet.is_err(), "no signal while nothing changes");

    write(root, "a.yaml", &service("web", "10.96.0.10"));
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(got.ok(), Some(Some(())), "a write is signalled");

    // In a subdirectory too (recursive).
    tokio::time::sleep(Duration::from_millis(200)).await;
    while rx.try_recv().is_ok() {}
    write(root, "sub/b.yaml", &service("api", "10.96.0.20"));
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(
        got.ok(),
        Some(Some(())),
        "a write in a subdirectory is signalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_coalesces_a_burst() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (_watcher, mut rx) =
        watch_dir(root, Duration::from_millis(300), Duration::from_secs(3600)).unwrap();
    for i in 0..5 {
        write(
            root,
            &format!("f{i}.yaml"),
            &service(&format!("s{i}"), "10.96.0.10"),
        );
    }
    std::fs::rename(root.join("f0.yaml"), root.join("g0.yaml")).unwrap();
    std::fs::remove_file(root.join("f1.yaml")).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert_eq!(got.ok(), Some(Some(())));
    let more = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await;
    assert!(more.is_err(), "one signal for the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_polls_without_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_watcher, mut rx) = watch_dir(
        tmp.path(),
        Duration::from_millis(50),
        Duration::from_millis(200),
    )
    .unwrap();
    for _ in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(got.ok(), Some(Some(())), "the poll signals");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_dir_of_a_missing_directory_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let result = watch_dir(
        &tmp.path().join("nope"),
        Duration::from_millis(50),
        Duration::from_secs(1),
    );
    assert!(result.is_err());
}

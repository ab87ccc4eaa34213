//! The API source and the election against the in-process API server: resume without a
//! relist, relist after 410 Gone, bookmarks, and a lease handed over.

use std::time::Duration;

use kube::Client;
use rvs_fakeapi::{as_new, fixture, list_items, FakeApi};
use rvs_kube::{run_election, ApiSource, LeaseConfig, WatchMetrics, WatchOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

async fn client(api: &FakeApi, dir: &tempfile::TempDir) -> Client {
    let path = api.write_kubeconfig(dir.path()).unwrap();
    rvs_kube::connect(Some(&path)).await.unwrap()
}

fn service(name: &str, ip: &str) -> Value {
    let mut s = as_new(fixture("service-web.json"));
    s["metadata"]["name"] = json!(name);
    s["spec"]["clusterIP"] = json!(ip);
    s["spec"]["clusterIPs"] = json!([ip]);
    s
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn service_names(source: &ApiSource) -> Vec<String> {
    let mut names: Vec<String> = source
        .objects()
        .services
        .iter()
        .filter_map(|s| s.object.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// Requests that listed (not watched) Services.
fn service_lists(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services") && !r.contains("watch=true"))
        .count()
}

fn service_watches(api: &FakeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/services") && r.contains("watch=true"))
        .collect()
}

/// The fake API holding Service `a`, and a source that has listed it.
async fn synced_with_service_a() -> (FakeApi, tempfile::TempDir, ApiSource, WatchMetrics) {
    let api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    api.put(service("a", "10.96.0.1"));
    let metrics = WatchMetrics::default();
    let source = ApiSource::start(
        client(&api, &dir).await,
        &WatchOptions::default(),
        metrics.clone(),
    );
    until("initial sync", || source.synced()).await;
    (api, dir, source, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_watches_and_resumes_without_relisting() {
    let (api, _dir, source, metrics) = synced_with_service_a().await;
    assert_eq!(service_names(&source), ["a"]);

    // Watch events: ADDED, MODIFIED, DELETED.
    api.put(service("b", "10.96.0.2"));
    until("b added", || service_names(&source) == ["a", "b"]).await;
    api.put(service("b", "10.96.0.3"));
    until("b modified", || {
        source.objects().services.iter().any(|s| {
            s.object.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("10.96.0.3")
        })
    })
    .await;
    assert!(api.delete("Service", "shop", "a"));
    until("a deleted", || service_names(&source) == ["b"]).await;

    // A dropped connection: the watch resumes from the last version it saw, no relist.
    let watches_before = service_watches(&api).len();
    api.cut_watches();
    // The change is made once the watch is back, so it can only arrive on the resumed one.
    until("the watch resumed", || {
        service_watches(&api).len() > watches_before
    })
    .await;
    api.put(service("c", "10.96.0.4"));
    until("c seen after the cut", || {
        service_names(&source) == ["b", "c"]
    })
    .await;
    assert_eq!(service_lists(&api), 1, "{:#?}", api.requests());
    let watches = service_watches(&api);
    assert!(watches.len() > watches_before);
    let resumed = watches.last().unwrap();
    assert!(
        resumed.contains("resourceVersion=") && !resumed.contains("resourceVersion=0&"),
        "resumed from a version: {resumed}"
    );
    assert!(resumed.contains("allowWatchBookmarks=true"), "{resumed}");
    assert_eq!(metrics.restarts("services", "relist"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relists_after_410_gone_and_sees_what_changed_meanwhile() {
    let (api, _dir, source, metrics) = synced_with_service_a().await;

    // The history rvs would resume from is compacted, and objects change meanwhile: the
    // resumed watch gets ERROR 410 Expired, and the relist must bring the new state,
    // including the deletion nobody saw as an event.
    api.go_down();
    api.put(service("b", "10.96.0.2"));
    api.delete("Service", "shop", "a");
    api.compact();
    api.come_back().await.unwrap();
    until("relisted", || service_names(&source) == ["b"]).await;
    assert!(service_lists(&api) >= 2, "{:#?}", api.requests());
    until("relist counted", || {
        metrics.restarts("services", "relist") >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_move_the_resume_point_forward() {
    let api = FakeApi::start().await.unwrap();
    api.set_bookmark_interval(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    api.put(service("a", "10.96.0.1"));
    let source = ApiSource::start(
        client(&api, &dir).await,
        &WatchOptions::default(),
        WatchMetrics::default(),
    );
    until("initial sync", || source.synced()).await;
    let listed_at = api.resource_version();

    // Other kinds change; Services do not. Only bookmarks tell the Service watcher that
    // the version moved on.
    for i in 0..5 {
        let mut cm = as_new(fixture("configmap-rvs.json"));
        cm["metadata"]["name"] = json!(format!("other-{i}"));
        api.put(cm);
    }
    let newest = api.resource_version();
    // Twenty bookmark intervals: time enough for one to arrive even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Compaction up to now: resuming from the listed version would be 410.
    api.compact();
    let watches_before = service_watches(&api).len();
    api.end_watches();
    until("the watch resumed", || {
        service_watches(&api).len() > watches_before
    })
    .await;
    let resumed = service_watches(&api).last().cloned().unwrap();
    let version: u64 = resumed
        .split("resourceVersion=")
        .nth(1)
        .and_then(|v| v.split('&').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        version > listed_at && version >= newest,
        "resumed from {version}; listed at {listed_at}, newest {newest}"
    );
    assert_eq!(service_lists(&api), 1, "no relist: {:#?}", api.requests());
    assert_eq!(service_names(&source), ["a"]);
}

fn quick(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaseConfig::new("rvs-system".into(), "rvs-leader".into(), identity.into())
    }
}

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(client: &Client, identity: &str) -> Candidate {
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_election(
        client.clone(),
        quick(identity),
        leading_tx,
        stop_rx,
    ));
    Candidate {
        leading,
        stop,
        task,
    }
}

fn holder(api: &FakeApi) -> Option<String> {
    api.get("Lease", "rvs-system", "rvs-leader")?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_hands_over_on_release_and_after_a_crash() {
    let api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&api, &dir).await;

    let a = candidate(&client, "rvs-a");
    until("a leads", || *a.leading.borrow()).await;
    let b = candidate(&client, "rvs-b");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!*b.leading.borrow(), "two leaders");
    assert_eq!(holder(&api).as_deref(), Some("rvs-a"));

    // A clean stop releases the lease: b takes over without waiting the lease out.
    let released = std::time::Instant::now();
    a.stop.send(true).unwrap();
    a.task.await.unwrap();
    until("b leads", || *b.leading.borrow()).await;
    assert!(
        released.elapsed() < Duration::from_millis(1500),
        "{:?}",
        released.elapsed()
    );
    assert_eq!(holder(&api).as_deref(), Some("rvs-b"));

    // A crash (no release): c waits the whole lease duration, then takes over.
    let c = candidate(&client, "rvs-c");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.task.abort();
    let crashed = std::time::Instant::now();
    until("c leads", || *c.leading.borrow()).await;
    assert!(
        crashed.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        crashed.elapsed()
    );
    assert_eq!(holder(&api).as_deref(), Some("rvs-c"));
    let lease = api.get("Lease", "rvs-system", "rvs-leader").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease}");
    drop(b.stop);
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
    assert_eq!(holder(&api), None, "released on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_lease_of_a_dead_holder_is_taken_over_after_its_duration() {
    let api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut lease = fixture("lease-rvs-leader.json");
    lease["spec"]["leaseDurationSeconds"] = json!(1);
    api.put(lease);
    let client = client(&api, &dir).await;
    let started = std::time::Instant::now();
    let c = candidate(&client, "rvs-new");
    until("the new candidate leads", || *c.leading.borrow()).await;
    // Measured from when it first saw the record, not from the record's renewTime.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let lease = api.get("Lease", "rvs-system", "rvs-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "rvs-new");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    c.stop.send(true).unwrap();
    c.task.await.unwrap();
}

fn status_writes(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("/ingresses/web/status"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_publishes_the_gateway_nodes_once_and_followers_never_write() {
    let api = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    api.put(fixture("ingressclass-rvs.json"));
    api.put(fixture("ingress-web.json"));
    // The recorded gateway pods (host IPs .11 and .12), and one pod of something else.
    let pods = list_items(&fixture("pod-list-rvs.json"), "Pod", "v1");
    for pod in &pods {
        api.put(pod.clone());
    }
    let mut other = pods[0].clone();
    other["metadata"]["name"] = json!("not-rvs");
    other["metadata"]["labels"] = json!({"app.kubernetes.io/name": "other"});
    other["status"]["hostIP"] = json!("192.168.10.99");
    api.put(other);

    let client = client(&api, &dir).await;
    let source = ApiSource::start(
        client.clone(),
        &WatchOptions {
            scope: rvs_kube::WatchScope::IngressesOnly,
            ..WatchOptions::default()
        },
        WatchMetrics::default(),
    );
    until("listed", || source.synced()).await;
    let (_served_tx, served) = watch::channel(vec![("shop".to_string(), "web".to_string())]);
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(rvs_kube::run_status(
        client,
        source.ingresses().clone(),
        served,
        leading,
        rvs_kube::StatusConfig {
            publish: rvs_kube::PublishFrom::Pods {
                namespace: "rvs-system".into(),
                label_selector: "app.kubernetes.io/name=rvs".into(),
            },
            period: Duration::from_millis(100),
        },
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_writes(&api), 0, "a follower wrote status");

    leading_tx.send(true).unwrap();
    until("status published", || {
        api.get("Ingress", "shop", "web").is_some_and(|i| {
            i["status"]["loadBalancer"]["ingress"]
                == json!([{"ip": "192.168.10.11"}, {"ip": "192.168.10.12"}])
        })
    })
    .await;
    // Once it shows the addresses, the leader leaves it alone.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(status_writes(&api), 1, "{:#?}", api.requests());
    stop.send(true).unwrap();
    writer.await.unwrap();
}

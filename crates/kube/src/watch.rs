//! Watchers and reflectors for every kind rvs reads, turned into the same [`ObjectSet`] a
//! manifest directory gives.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use rvs_model::{ObjectSet, Origin, Sourced};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::WatchMetrics;

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only this namespace's Services, EndpointSlices, Ingresses and Secrets.
    pub namespace: Option<String>,
    /// The global ingress-nginx style ConfigMap.
    pub configmap: Option<(String, String)>,
    /// This node, for its zone (topology-aware routing).
    pub node_name: Option<String>,
    pub scope: WatchScope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Everything the data plane serves.
    #[default]
    All,
    /// Ingresses and IngressClasses only: what the admission webhook checks against.
    IngressesOnly,
}

/// State shared by the watch tasks and the reader.
struct Shared {
    changed: Notify,
    /// When each event not yet applied arrived (for the event-to-data-plane histogram).
    pending: Mutex<Vec<Instant>>,
    /// Watchers whose first list is not complete.
    unsynced: AtomicUsize,
    metrics: WatchMetrics,
}

impl Shared {
    fn event(&self, at: Option<Instant>) {
        if let Some(at) = at {
            if let Ok(mut pending) = self.pending.lock() {
                // Bounded: a flood while nothing applies keeps only the oldest arrivals, which
                // are the ones that define the delay.
                if pending.len() < 100_000 {
                    pending.push(at);
                }
            }
        }
        self.changed.notify_one();
    }
}

/// The Kubernetes API as a source: one reflector per kind, read as an [`ObjectSet`].
pub struct ApiSource {
    shared: Arc<Shared>,
    services: Option<Store<Service>>,
    endpoint_slices: Option<Store<EndpointSlice>>,
    ingresses: Store<Ingress>,
    ingress_classes: Store<IngressClass>,
    secrets: Option<Store<Secret>>,
    opaque_secrets: Option<Store<Secret>>,
    config_maps: Option<Store<ConfigMap>>,
    nodes: Option<Store<Node>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An `Api` over one namespace or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl ApiSource {
    /// Starts the watchers (they retry with backoff forever; see [`ApiSource::synced`]).
    pub fn start(client: Client, options: &WatchOptions, metrics: WatchMetrics) -> ApiSource {
        let shared = Arc::new(Shared {
            changed: Notify::new(),
            pending: Mutex::new(Vec::new()),
            unsynced: AtomicUsize::new(0),
            metrics,
        });
        let mut tasks = Vec::new();
        let ns = options.namespace.as_deref();
        let config = watcher::Config::default();
        let watch = |name: &'static str| (shared.clone(), name);

        let all = options.scope == WatchScope::All;
        let services = all.then(|| {
            spawn(
                scoped::<Service>(&client, ns),
                config.clone(),
                watch("services"),
                &mut tasks,
            )
        });
        let endpoint_slices = all.then(|| {
            spawn(
                scoped::<EndpointSlice>(&client, ns),
                config.clone(),
                watch("endpointslices"),
                &mut tasks,
            )
        });
        let ingresses = spawn(
            scoped::<Ingress>(&client, ns),
            config.clone(),
            watch("ingresses"),
            &mut tasks,
        );
        let ingress_classes = spawn(
            Api::<IngressClass>::all(client.clone()),
            config.clone(),
            watch("ingressclasses"),
            &mut tasks,
        );
        // The Secrets an Ingress can use, filtered by the API server: TLS certificates, and
        // Opaque ones (`auth-type: basic` users); service-account tokens, registry
        // credentials and Helm releases are never read.
        let secrets = all.then(|| {
            spawn(
                scoped::<Secret>(&client, ns),
                config.clone().fields("type=kubernetes.io/tls"),
                watch("secrets"),
                &mut tasks,
            )
        });
        let opaque_secrets = all.then(|| {
            spawn(
                scoped::<Secret>(&client, ns),
                config.clone().fields("type=Opaque"),
                watch("secrets"),
                &mut tasks,
            )
        });
        let config_maps = match (&options.configmap, all) {
            (Some((cm_ns, name)), true) => Some(spawn(
                Api::<ConfigMap>::namespaced(client.clone(), cm_ns),
                config.clone().fields(&format!("metadata.name={name}")),
                watch("configmaps"),
                &mut tasks,
            )),
            _ => None,
        };
        let nodes = match (&options.node_name, all) {
            (Some(node), true) => Some(spawn(
                Api::<Node>::all(client.clone()),
                config.clone().fields(&format!("metadata.name={node}")),
                watch("nodes"),
                &mut tasks,
            )),
            _ => None,
        };
        ApiSource {
            shared,
            services,
            endpoint_slices,
            ingresses,
            ingress_classes,
            secrets,
            opaque_secrets,
            config_maps,
            nodes,
            tasks,
        }
    }

    /// Whether every watcher has listed its kind once: before that a snapshot would be
    /// missing objects (and would remove Services that exist).
    pub fn synced(&self) -> bool {
        self.shared.unsynced.load(Ordering::Acquire) == 0
    }

    /// Waits for the next change (a list completed, an object added, changed or deleted).
    pub async fn changed(&self) {
        self.shared.changed.notified().await
    }

    /// When the events not yet applied arrived; empties the list.
    pub fn take_pending(&self) -> Vec<Instant> {
        self.shared
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Records that the events taken with [`ApiSource::take_pending`] are now applied.
    pub fn applied(&self, pending: &[Instant]) {
        let now = Instant::now();
        for at in pending {
            self.shared
                .metrics
                .event_to_applied
                .observe(now.duration_since(*at).as_secs_f64());
        }
    }

    /// Puts back event times whose configuration could not be applied: they count from
    /// their arrival until a later apply succeeds.
    pub fn requeue(&self, mut pending: Vec<Instant>) {
        if let Ok(mut p) = self.shared.pending.lock() {
            pending.append(&mut p);
            *p = pending;
        }
    }

    /// Everything watched, as the model's input.
    pub fn objects(&self) -> ObjectSet {
        ObjectSet {
            services: read(self.services.as_ref()),
            endpoint_slices: read(self.endpoint_slices.as_ref()),
            ingresses: read(Some(&self.ingresses)),
            ingress_classes: read(Some(&self.ingress_classes)),
            secrets: [
                read(self.secrets.as_ref()),
                read(self.opaque_secrets.as_ref()),
            ]
            .concat(),
            config_maps: read(self.config_maps.as_ref()),
        }
    }

    /// This node, once listed.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.nodes.as_ref()?.state().into_iter().next()
    }

    /// The Ingresses as the API last showed them (for status updates).
    pub fn ingresses(&self) -> &Store<Ingress> {
        &self.ingresses
    }
}

/// The zone label of a node (`topology.kubernetes.io/zone`).
pub fn node_zone(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()?
        .get("topology.kubernetes.io/zone")
        .cloned()
}

fn read<K>(store: Option<&Store<K>>) -> Vec<Sourced<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let Some(store) = store else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .map(|object| Sourced {
            origin: Origin::Api,
            object: object.clone(),
        })
        .collect()
}

/// Runs one kind's watcher into a reflector store, telling `shared` about every change.
fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    (shared, resource): (Arc<Shared>, &'static str),
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    shared.unsynced.fetch_add(1, Ordering::AcqRel);
    // Bookmarks are on by default: a resumed watch starts from the newest version seen.
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => {
                    if listed {
                        // A relist: the watch could not resume (410 Gone, or no version).
                        shared.metrics.restart(resource, "relist");
                        tracing::info!(resource, "relisting");
                    }
                }
                Ok(Event::InitApply(_)) => {}
                Ok(Event::InitDone) => {
                    if !listed {
                        listed = true;
                        shared.unsynced.fetch_sub(1, Ordering::AcqRel);
                        tracing::debug!(resource, "listed");
                    }
                    failing = false;
                    shared.event(None);
                }
                Ok(Event::Apply(_) | Event::Delete(_)) => {
                    if failing {
                        tracing::info!(resource, "watching again");
                        failing = false;
                    }
                    shared.metrics.event(resource);
                    shared.event(Some(Instant::now()));
                }
                // 410 Gone: not a failure; the relist that follows is counted as one.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::debug!(resource, "resource version expired (410)");
                }
                Err(e) => {
                    shared.metrics.restart(resource, "error");
                    // Once per outage, not once per retry: the last configuration keeps serving.
                    if !failing {
                        tracing::warn!(resource, error = %e, "watch failed; retrying, the last configuration keeps serving");
                        failing = true;
                    } else {
                        tracing::debug!(resource, error = %e, "watch failed again");
                    }
                }
            }
        }
    }));
    reader
}

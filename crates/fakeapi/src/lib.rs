//! A Kubernetes API server in-process, for tests and benchmarks: no apiserver can run on the
//! machines rvs is built on. It speaks the parts of the API rvs uses, as a 1.33 API server
//! does: lists with a resourceVersion (items without kind/apiVersion), watch streams from a
//! resourceVersion with ADDED / MODIFIED / DELETED / BOOKMARK events, `ERROR` 410 Expired for
//! a compacted version, field and label selectors, optimistic concurrency on PUT (409), and the
//! `status` subresource. Tests drive it: change objects, compact history, end or drop watches,
//! take the whole server down and up again.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

/// A recorded object from `tests/fixtures/kube/`.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kube")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A recorded object as a new one: what the server assigns (uid, resourceVersion, creation
/// time) and what a new object would not carry (managed fields, kubectl's last-applied
/// annotation) removed.
pub fn as_new(mut object: Value) -> Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(key);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    object
}

/// The items of a recorded list, each with the kind and apiVersion a GET or a watch shows
/// (a list's items carry neither).
pub fn list_items(list: &Value, kind: &str, api_version: &str) -> Vec<Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let mut item = item.clone();
            item["kind"] = json!(kind);
            item["apiVersion"] = json!(api_version);
            item
        })
        .collect()
}

/// One kind the server knows.
struct ResourceType {
    /// `api/v1` or `apis/GROUP/VERSION`.
    prefix: &'static str,
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
}

const TYPES: &[ResourceType] = &[
    ResourceType {
        prefix: "api/v1",
        plural: "services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "apis/networking.k8s.io/v1",
        plural: "ingresses",
        kind: "Ingress",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "apis/networking.k8s.io/v1",
        plural: "ingressclasses",
        kind: "IngressClass",
        api_version: "networking.k8s.io/v1",
        namespaced: false,
    },
    ResourceType {
        prefix: "api/v1",
        plural: "secrets",
        kind: "Secret",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "api/v1",
        plural: "configmaps",
        kind: "ConfigMap",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "api/v1",
        plural: "nodes",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
    },
    ResourceType {
        prefix: "api/v1",
        plural: "pods",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
    },
    ResourceType {
        prefix: "apis/coordination.k8s.io/v1",
        plural: "leases",
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        namespaced: true,
    },
];

fn type_of_object(object: &Value) -> Option<usize> {
    let kind = object.get("kind")?.as_str()?;
    let api_version = object.get("apiVersion")?.as_str()?;
    TYPES
        .iter()
        .position(|t| t.kind == kind && t.api_version == api_version)
}

/// A change, as a watch sends it.
struct Change {
    rv: u64,
    resource: usize,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Collection {
    /// (namespace or "", name) -> object, with kind and apiVersion.
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Arc<Change>>,
}

struct State {
    rv: u64,
    /// Changes at or below this version are forgotten: watching from them gets 410.
    compacted: u64,
    collections: HashMap<usize, Collection>,
    requests: Vec<String>,
    uid: u64,
}

struct Inner {
    state: Mutex<State>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Bumped to end every open watch cleanly (as the server's timeout does).
    end_watches: watch::Sender<u64>,
    /// Bumped to cut every open watch mid-stream (a dropped connection).
    cut_watches: watch::Sender<u64>,
    bookmark_interval: Mutex<Duration>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server. Dropping it stops it.
pub struct FakeApi {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: Mutex<Option<JoinSet<()>>>,
}

impl FakeApi {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(1 << 16);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                rv: 1000,
                compacted: 0,
                collections: HashMap::new(),
                requests: Vec::new(),
                uid: 0,
            }),
            changes,
            end_watches: watch::channel(0).0,
            cut_watches: watch::channel(0).0,
            bookmark_interval: Mutex::new(Duration::from_secs(60)),
        });
        let api = FakeApi {
            inner,
            addr,
            server: Mutex::new(None),
        };
        api.serve(listener);
        Ok(api)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let mut tasks = JoinSet::new();
        let inner = self.inner.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = inner.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(handle(&inner, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(tasks);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: rvs\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: rvs\ncurrent-context: fake\n",
                self.url()
            ),
        )?;
        Ok(path)
    }

    /// Watch bookmarks this often (a real API server: about once a minute).
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self
            .inner
            .bookmark_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = every;
    }

    /// Creates or replaces an object (its kind and apiVersion say where); sets
    /// resourceVersion, and uid and creationTimestamp when missing. Returns the new version.
    pub fn put(&self, mut object: Value) -> u64 {
        let Some(resource) = type_of_object(&object) else {
            panic!("fake API: unknown kind in {object}");
        };
        let mut state = self.inner.state();
        let key = object_key(&TYPES[resource], &object);
        let existing = state
            .collections
            .get(&resource)
            .and_then(|c| c.objects.get(&key))
            .cloned();
        stamp(&mut state, &mut object, existing.as_ref());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        record(&self.inner, &mut state, resource, key, kind, object)
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(resource) = TYPES.iter().position(|t| t.kind == kind) else {
            return false;
        };
        let mut state = self.inner.state();
        let key = (
            if TYPES[resource].namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        );
        let Some(mut object) = state
            .collections
            .get_mut(&resource)
            .and_then(|c| c.objects.remove(&key))
        else {
            return false;
        };
        state.rv += 1;
        let rv = state.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Arc::new(Change {
            rv,
            resource,
            kind: "DELETED",
            object,
        });
        state
            .collections
            .entry(resource)
            .or_default()
            .history
            .push(change.clone());
        let _ = self.inner.changes.send(change);
        true
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = TYPES.iter().position(|t| t.kind == kind)?;
        let ns = if TYPES[resource].namespaced {
            namespace
        } else {
            ""
        };
        self.inner
            .state()
            .collections
            .get(&resource)?
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Forgets history, as etcd compaction does: watches resumed from an older version get
    /// `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut state = self.inner.state();
        state.compacted = state.rv;
        for c in state.collections.values_mut() {
            c.history.clear();
        }
    }

    /// Ends every open watch cleanly, as the server's watch timeout does.
    pub fn end_watches(&self) {
        self.inner.end_watches.send_modify(|g| *g += 1);
    }

    /// Cuts every open watch mid-stream, as a lost connection does.
    pub fn cut_watches(&self) {
        self.inner.cut_watches.send_modify(|g| *g += 1);
    }

    /// Takes the server down: open connections reset, new ones refused.
    pub fn go_down(&self) {
        if let Some(mut tasks) = self.server.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tasks.abort_all();
        }
        self.cut_watches();
    }

    /// Brings it back on the same address.
    pub async fn come_back(&self) -> std::io::Result<()> {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "fake API: rebinding");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.serve(listener);
        Ok(())
    }

    /// Requests so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.state().requests.clone()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.state().rv
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn object_key(t: &ResourceType, object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let namespace = if t.namespaced {
        meta["namespace"].as_str().unwrap_or("default").to_string()
    } else {
        String::new()
    };
    (
        namespace,
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Sets what the server owns in metadata; keeps uid and creation time of an existing object.
fn stamp(state: &mut State, object: &mut Value, existing: Option<&Value>) {
    state.rv += 1;
    let rv = state.rv;
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let (uid, created) = match existing {
        Some(e) => (
            e["metadata"]["uid"].clone(),
            e["metadata"]["creationTimestamp"].clone(),
        ),
        None => {
            state.uid += 1;
            (
                object["metadata"].get("uid").cloned().unwrap_or_else(|| {
                    json!(format!("00000000-0000-4000-8000-{:012x}", state.uid))
                }),
                object["metadata"]
                    .get("creationTimestamp")
                    .cloned()
                    .unwrap_or_else(|| json!(now_rfc3339())),
            )
        }
    };
    let meta = &mut object["metadata"];
    meta["uid"] = uid;
    meta["creationTimestamp"] = created;
    meta["resourceVersion"] = json!(rv.to_string());
}

fn record(
    inner: &Inner,
    state: &mut State,
    resource: usize,
    key: (String, String),
    kind: &'static str,
    object: Value,
) -> u64 {
    let rv = state.rv;
    let change = Arc::new(Change {
        rv,
        resource,
        kind,
        object: object.clone(),
    });
    let collection = state.collections.entry(resource).or_default();
    collection.objects.insert(key, object);
    collection.history.push(change.clone());
    let _ = inner.changes.send(change);
    rv
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `Status` object, as the API server returns for errors.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// The request's target: a kind, maybe a namespace, name and subresource.
struct Target {
    resource: usize,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix_len, prefix) = match *segments.first()? {
        "api" => (2, segments.get(..2)?.join("/")),
        "apis" => (3, segments.get(..3)?.join("/")),
        _ => return None,
    };
    let mut rest = &segments[prefix_len..];
    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let plural = rest.first()?;
    let resource = TYPES
        .iter()
        .position(|t| t.prefix == prefix && t.plural == *plural)?;
    Some(Target {
        resource,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (selectors arrive encoded).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fieldSelector` and `labelSelector` terms: `a=b`, `a==b`, `a!=b`, and for labels `a`.
struct Selector {
    fields: Vec<(String, String, bool)>,
    labels: Vec<(String, Option<String>, bool)>,
}

fn split_term(term: &str) -> (String, Option<String>, bool) {
    if let Some((k, v)) = term.split_once("!=") {
        (k.to_string(), Some(v.to_string()), false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k.to_string(), Some(v.to_string()), true)
    } else if let Some((k, v)) = term.split_once('=') {
        (k.to_string(), Some(v.to_string()), true)
    } else {
        (term.to_string(), None, true)
    }
}

impl Selector {
    fn parse(q: &HashMap<String, String>) -> Selector {
        let terms = |key: &str| -> Vec<(String, Option<String>, bool)> {
            q.get(key)
                .map(|s| {
                    s.split(',')
                        .filter(|t| !t.is_empty())
                        .map(split_term)
                        .collect()
                })
                .unwrap_or_default()
        };
        Selector {
            fields: terms("fieldSelector")
                .into_iter()
                .map(|(k, v, eq)| (k, v.unwrap_or_default(), eq))
                .collect(),
            labels: terms("labelSelector"),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(path, want, eq)| {
            let got = path
                .split('.')
                .try_fold(object, |v, key| v.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default();
            (got == want) == *eq
        });
        let labels = &object["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|(key, want, eq)| {
            let got = labels.get(key).and_then(Value::as_str);
            match want {
                None => got.is_some(),
                Some(want) => (got == Some(want.as_str())) == *eq,
            }
        });
        fields_ok && labels_ok
    }
}

fn in_scope(target: &Target, object: &Value) -> bool {
    target
        .namespace
        .as_deref()
        .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
}

async fn handle(inner: &Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default()
    );
    inner.state().requests.push(line);
    let Some(target) = parse_target(req.uri().path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let q = query(&req);
    let method = req.method().clone();
    match (&method, &target.name) {
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch_response(inner, target, &q)
        }
        (&Method::GET, None) => list(inner, &target, &q),
        (&Method::GET, Some(name)) => {
            let t = &TYPES[target.resource];
            let key = (target.namespace.clone().unwrap_or_default(), name.clone());
            match inner
                .state()
                .collections
                .get(&target.resource)
                .and_then(|c| c.objects.get(&key))
            {
                Some(object) => full(StatusCode::OK, object.clone()),
                None => not_found(t, name),
            }
        }
        (&Method::POST, None) | (&Method::PUT, Some(_)) => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return status(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body"),
            };
            let object: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid JSON: {e}"),
                    )
                }
            };
            write(inner, &target, method == Method::POST, object)
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not supported by the fake API",
        ),
    }
}

fn not_found(t: &ResourceType, name: &str) -> Response<Body> {
    let group = t.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let what = if group.is_empty() {
        t.plural.to_string()
    } else {
        format!("{}.{group}", t.plural)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{what} \"{name}\" not found"),
    )
}

fn list(inner: &Inner, target: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let t = &TYPES[target.resource];
    let selector = Selector::parse(q);
    let state = inner.state();
    let items: Vec<Value> = state
        .collections
        .get(&target.resource)
        .map(|c| {
            c.objects
                .values()
                .filter(|o| in_scope(target, o) && selector.matches(o))
                .map(|o| {
                    // A list's items carry no kind or apiVersion.
                    let mut item = o.clone();
                    if let Some(map) = item.as_object_mut() {
                        map.remove("kind");
                        map.remove("apiVersion");
                    }
                    item
                })
                .collect()
        })
        .unwrap_or_default();
    full(
        StatusCode::OK,
        json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version,
               "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
    )
}

fn write(inner: &Inner, target: &Target, create: bool, mut object: Value) -> Response<Body> {
    let t = &TYPES[target.resource];
    object["kind"] = json!(t.kind);
    object["apiVersion"] = json!(t.api_version);
    if t.namespaced {
        let Some(ns) = &target.namespace else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "a namespace is required",
            );
        };
        object["metadata"]["namespace"] = json!(ns);
    }
    let key = object_key(t, &object);
    if let Some(name) = &target.name {
        if &key.1 != name {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the name in the body does not match the URL",
            );
        }
    }
    let mut state = inner.state();
    let existing = state
        .collections
        .get(&target.resource)
        .and_then(|c| c.objects.get(&key))
        .cloned();
    match (&existing, create) {
        (Some(_), true) => {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{}\" already exists", t.plural, key.1),
            )
        }
        (None, false) => return not_found(t, &key.1),
        _ => {}
    }
    if let Some(existing) = &existing {
        let sent = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        let current = existing["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !sent.is_empty() && sent != current {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again", t.plural, key.1),
            );
        }
        // The status subresource changes status only; the main resource everything else.
        let status_only = target.subresource.as_deref() == Some("status");
        let mut merged = existing.clone();
        if status_only {
            merged["status"] = object["status"].take();
        } else {
            let kept_status = existing["status"].clone();
            merged = object;
            if !kept_status.is_null() {
                merged["status"] = kept_status;
            }
        }
        object = merged;
    }
    stamp(&mut state, &mut object, existing.as_ref());
    let kind = if existing.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    record(
        inner,
        &mut state,
        target.resource,
        key,
        kind,
        object.clone(),
    );
    full(
        if create {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        object,
    )
}

/// A BOOKMARK's object: the kind's zero value (what Go's encoder writes for an empty
/// object, `null`s and empty structs included) with only the resourceVersion set.
fn bookmark(t: &ResourceType, rv: u64) -> Value {
    let mut mark = json!({"kind": t.kind, "apiVersion": t.api_version,
                          "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}});
    let zero = match t.kind {
        "EndpointSlice" => json!({"addressType": "", "endpoints": null, "ports": null}),
        "Service" => json!({"spec": {}, "status": {"loadBalancer": {}}}),
        "Ingress" => json!({"spec": {}, "status": {"loadBalancer": {}}}),
        "Node" | "Pod" => json!({"spec": {}, "status": {}}),
        "IngressClass" | "Lease" => json!({"spec": {}}),
        _ => json!({}),
    };
    if let (Some(mark), Some(zero)) = (mark.as_object_mut(), zero.as_object()) {
        mark.extend(zero.clone());
    }
    mark
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(
    inner: &Arc<Inner>,
    target: Target,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let t = &TYPES[target.resource];
    let selector = Selector::parse(q);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);

    // Subscribe before reading history, under the lock: nothing falls in between.
    let state = inner.state();
    let mut live = inner.changes.subscribe();
    let mut backlog: Vec<Bytes> = Vec::new();
    let mut gone = false;
    if from != 0 && from < state.compacted {
        gone = true;
        backlog.push(event_line(
            "ERROR",
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", state.compacted),
                    "reason": "Expired", "code": 410}),
        ));
    } else if let Some(c) = state.collections.get(&target.resource) {
        if from == 0 {
            // No version: the current objects as ADDED, then changes.
            for o in c.objects.values() {
                if in_scope(&target, o) && selector.matches(o) {
                    backlog.push(event_line("ADDED", o));
                }
            }
        } else {
            for change in c.history.iter().filter(|ch| ch.rv > from) {
                if in_scope(&target, &change.object) && selector.matches(&change.object) {
                    backlog.push(event_line(change.kind, &change.object));
                }
            }
        }
    }
    let mut last_rv = state.rv.max(from);
    drop(state);

    let interval = *inner
        .bookmark_interval
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut end = inner.end_watches.subscribe();
    let mut cut = inner.cut_watches.subscribe();
    end.mark_unchanged();
    cut.mark_unchanged();
    let inner = inner.clone();
    let resource = target.resource;
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                change = live.recv() => match change {
                    Ok(change) => {
                        if !forward(&tx, &change, resource, &target, &selector, &mut last_rv).await {
                            return;
                        }
                    }
                    // Too slow a reader: end the watch; the client resumes.
                    Err(_) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    // Every change up to this version is in the channel already (sent under
                    // the lock): send those first, as a real server never bookmarks past an
                    // event it has not sent.
                    let rv = inner.state().rv;
                    loop {
                        match live.try_recv() {
                            Ok(change) => {
                                if !forward(&tx, &change, resource, &target, &selector, &mut last_rv).await {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    last_rv = last_rv.max(rv);
                    let mark = bookmark(t, last_rv);
                    if tx.send(Ok(Frame::data(event_line("BOOKMARK", &mark)))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = end.changed() => return,
                _ = cut.changed() => {
                    let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch cut"))).await;
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

type Frames = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// Sends a change to a watch if it is of its kind, new to it and selected; false when the
/// client is gone.
async fn forward(
    tx: &Frames,
    change: &Change,
    resource: usize,
    target: &Target,
    selector: &Selector,
    last_rv: &mut u64,
) -> bool {
    if change.resource != resource || change.rv <= *last_rv {
        return true;
    }
    *last_rv = change.rv;
    if !in_scope(target, &change.object) || !selector.matches(&change.object) {
        return true;
    }
    tx.send(Ok(Frame::data(event_line(change.kind, &change.object))))
        .await
        .is_ok()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

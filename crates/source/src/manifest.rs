//! A directory of Kubernetes manifests (`*.yaml`, `*.yml`, `*.json`, multi-document, `List`).

// A Problem is big, but only ever built on the cold path of a bad file.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::ByteString;
use rvs_model::{ObjectRef, ObjectSet, Origin, Problem, Sourced};
use serde::Deserialize;
use serde_yaml::Value;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot read the manifest directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One object of a kind rvs reads.
#[derive(Debug, Clone)]
pub enum ParsedObject {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Ingress(Arc<Ingress>),
    /// Cluster-scoped: its [`ObjectRef`] has no namespace.
    IngressClass(Arc<IngressClass>),
    /// With `stringData` merged into `data` (`stringData` wins), as the API server does.
    Secret(Arc<Secret>),
    ConfigMap(Arc<ConfigMap>),
}

impl ParsedObject {
    fn object_ref(&self) -> ObjectRef {
        let (kind, meta) = match self {
            ParsedObject::Service(s) => ("Service", &s.metadata),
            ParsedObject::EndpointSlice(s) => ("EndpointSlice", &s.metadata),
            ParsedObject::Ingress(s) => ("Ingress", &s.metadata),
            ParsedObject::IngressClass(s) => ("IngressClass", &s.metadata),
            ParsedObject::Secret(s) => ("Secret", &s.metadata),
            ParsedObject::ConfigMap(s) => ("ConfigMap", &s.metadata),
        };
        ObjectRef {
            kind: kind.into(),
            namespace: if is_cluster_scoped(kind) {
                String::new()
            } else {
                meta.namespace.clone().unwrap_or_else(|| "default".into())
            },
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

fn is_cluster_scoped(kind: &str) -> bool {
    kind == "IngressClass"
}

/// `stringData` is write-only: the API server merges it into `data`, its keys winning.
fn merge_string_data(mut secret: Secret) -> Secret {
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in string_data {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }
    secret
}

/// What one document of a file became.
struct Document {
    /// Identity read from the raw document, even when the object itself did not parse.
    identity: Option<ObjectRef>,
    /// The YAML document it came from (all items of a `List` share their document).
    origin: Origin,
    result: Result<Option<ParsedObject>, Problem>,
}

fn parse_documents(path: &Path, text: &str) -> Result<Vec<Document>, Problem> {
    let mut documents = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin::File {
            path: path.to_path_buf(),
            document: index,
        };
        let value = Value::deserialize(de).map_err(|e| Problem {
            origin: origin.clone(),
            object: None,
            field: String::new(),
            message: format!("not valid YAML or JSON: {e}"),
        })?;
        flatten(value, &origin, &mut documents);
    }
    Ok(documents)
}

/// Expands `kind: List` (what `kubectl get -o yaml` writes) into its items.
fn flatten(value: Value, origin: &Origin, out: &mut Vec<Document>) {
    if value.is_null() {
        return;
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        if let Some(Value::Sequence(items)) = value.get("items").cloned() {
            for item in items {
                flatten(item, origin, out);
            }
        }
        return;
    }
    out.push(parse_value(value, origin));
}

fn identity(kind: &str, value: &Value) -> Option<ObjectRef> {
    let meta = value.get("metadata")?;
    Some(ObjectRef {
        kind: kind.to_string(),
        namespace: if is_cluster_scoped(kind) {
            String::new()
        } else {
            meta.get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string()
        },
        name: meta.get("name").and_then(Value::as_str)?.to_string(),
    })
}

fn parse_value(value: Value, origin: &Origin) -> Document {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let identity = identity(&kind, &value);
    let problem = |message: String| Problem {
        origin: origin.clone(),
        object: identity.clone(),
        field: String::new(),
        message,
    };
    let result = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Service") => serde_yaml::from_value::<Service>(value)
            .map(|s| Some(ParsedObject::Service(Arc::new(s))))
            .map_err(|e| problem(format!("not a valid Service: {e}"))),
        ("discovery.k8s.io/v1", "EndpointSlice") => serde_yaml::from_value::<EndpointSlice>(value)
            .map(|s| Some(ParsedObject::EndpointSlice(Arc::new(s))))
            .map_err(|e| problem(format!("not a valid EndpointSlice: {e}"))),
        ("networking.k8s.io/v1", "Ingress") => serde_yaml::from_value::<Ingress>(value)
            .map(|s| Some(ParsedObject::Ingress(Arc::new(s))))
            .map_err(|e| problem(format!("not a valid Ingress: {e}"))),
        ("networking.k8s.io/v1", "IngressClass") => serde_yaml::from_value::<IngressClass>(value)
            .map(|s| Some(ParsedObject::IngressClass(Arc::new(s))))
            .map_err(|e| problem(format!("not a valid IngressClass: {e}"))),
        ("v1", "Secret") => serde_yaml::from_value::<Secret>(value)
            .map(|s| Some(ParsedObject::Secret(Arc::new(merge_string_data(s)))))
            .map_err(|e| problem(format!("not a valid Secret: {e}"))),
        ("v1", "ConfigMap") => serde_yaml::from_value::<ConfigMap>(value)
            .map(|s| Some(ParsedObject::ConfigMap(Arc::new(s))))
            .map_err(|e| problem(format!("not a valid ConfigMap: {e}"))),
        (_, "") => Err(problem("has no kind".into())),
        // Other kinds (Deployments, Endpoints, ...) are not rvs's business.
        _ => Ok(None),
    };
    let result = result.and_then(|object| match object {
        Some(o) if o.object_ref().name.is_empty() => Err(problem("metadata.name: missing".into())),
        other => Ok(other),
    });
    Document {
        identity,
        origin: origin.clone(),
        result,
    }
}

/// The last good objects of one file, by identity.
#[derive(Default)]
struct FileState {
    objects: Vec<Sourced<ParsedObject>>,
}

/// A manifest directory, read whole on each load. Remembers each file's and each object's
/// last good version, so a bad edit keeps the previous configuration serving.
pub struct ManifestDir {
    root: PathBuf,
    files: HashMap<PathBuf, FileState>,
    /// Every manifest's path, modification time and size at the last load.
    fingerprint: Option<Fingerprint>,
}

type Fingerprint = Vec<(PathBuf, Option<std::time::SystemTime>, u64)>;

impl ManifestDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ManifestDir {
            root: root.into(),
            files: HashMap::new(),
            fingerprint: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether any manifest was added, removed or modified since the last load: a directory
    /// listing and a stat per file, far cheaper than parsing thousands of objects again.
    pub fn has_changed(&self) -> bool {
        match (&self.fingerprint, self.scan()) {
            (Some(last), Ok(now)) => *last != now,
            _ => true,
        }
    }

    fn scan(&self) -> std::io::Result<Fingerprint> {
        let mut paths = Vec::new();
        collect_files(&self.root, &mut paths)?;
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let modified = meta.as_ref().and_then(|m| m.modified().ok());
                let len = meta.map_or(0, |m| m.len());
                (p, modified, len)
            })
            .collect())
    }

    /// Reads every manifest under the directory (recursively, in name order).
    pub fn load(&mut self) -> Result<(ObjectSet, Vec<Problem>), SourceError> {
        let mut paths = Vec::new();
        collect_files(&self.root, &mut paths).map_err(|source| SourceError::Dir {
            path: self.root.clone(),
            source,
        })?;
        paths.sort();
        // Taken before reading: a file changed while being read shows up as changed next time.
        self.fingerprint = self.scan().ok();
        let mut problems = Vec::new();
        let mut files = HashMap::new();
        for path in paths {
            let previous = self.files.remove(&path).unwrap_or_default();
            let state = match std::fs::read_to_string(&path) {
                Ok(text) => load_file(&path, &text, previous, &mut problems),
                Err(e) => {
                    problems.push(Problem {
                        origin: Origin::File {
                            path: path.clone(),
                            document: 0,
                        },
                        object: None,
                        field: String::new(),
                        message: format!("cannot read: {e}"),
                    });
                    previous
                }
            };
            files.insert(path, state);
        }
        self.files = files;

        let mut set = ObjectSet::default();
        let mut paths: Vec<&PathBuf> = self.files.keys().collect();
        paths.sort();
        for path in paths {
            for sourced in &self.files[path].objects {
                let origin = sourced.origin.clone();
                match &*sourced.object {
                    ParsedObject::Service(s) => set.services.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                    ParsedObject::EndpointSlice(s) => set.endpoint_slices.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                    ParsedObject::Ingress(s) => set.ingresses.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                    ParsedObject::IngressClass(s) => set.ingress_classes.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                    ParsedObject::Secret(s) => set.secrets.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                    ParsedObject::ConfigMap(s) => set.config_maps.push(Sourced {
                        origin,
                        object: s.clone(),
                    }),
                }
            }
        }
        Ok((set, problems))
    }
}

fn load_file(
    path: &Path,
    text: &str,
    previous: FileState,
    problems: &mut Vec<Problem>,
) -> FileState {
    let documents = match parse_documents(path, text) {
        Ok(d) => d,
        Err(problem) => {
            // A new file has nothing to keep: say so only when something is kept.
            let suffix = if previous.objects.is_empty() {
                ""
            } else {
                "; keeping this file's last good objects"
            };
            problems.push(Problem {
                message: format!("{}{suffix}", problem.message),
                ..problem
            });
            return previous;
        }
    };
    let mut objects = Vec::new();
    for doc in documents {
        match doc.result {
            Ok(Some(object)) => objects.push(Sourced::new(doc.origin, object)),
            Ok(None) => {}
            Err(problem) => {
                let kept = doc.identity.as_ref().and_then(|id| {
                    previous
                        .objects
                        .iter()
                        .find(|o| &o.object.object_ref() == id)
                });
                let suffix = if kept.is_some() {
                    "; keeping its last good version"
                } else {
                    ""
                };
                problems.push(Problem {
                    message: format!("{}{suffix}", problem.message),
                    ..problem
                });
                if let Some(old) = kept {
                    objects.push(old.clone());
                }
            }
        }
    }
    FileState { objects }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let file_type = entry.file_type()?;
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if file_type.is_dir() && !hidden {
            collect_files(&path, out)?;
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

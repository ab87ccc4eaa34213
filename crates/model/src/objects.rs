use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// Where an object came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Origin {
    /// A manifest file and the document's index in it (0-based).
    File { path: PathBuf, document: usize },
    /// The Kubernetes API.
    #[default]
    Api,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, document: 0 } => write!(f, "{}", path.display()),
            Origin::File { path, document } => {
                write!(f, "{} (document {})", path.display(), document + 1)
            }
            Origin::Api => f.write_str("api"),
        }
    }
}

/// A typed Kubernetes object and where it came from. Shared, not copied: the API source
/// hands out the objects its reflectors hold, so building a snapshot of 10,000 Services
/// copies none of them.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub origin: Origin,
    pub object: Arc<T>,
}

impl<T> Sourced<T> {
    pub fn new(origin: Origin, object: T) -> Sourced<T> {
        Sourced {
            origin,
            object: Arc::new(object),
        }
    }
}

/// Everything a source delivers: the input of [`crate::Snapshot::build`] (Services and
/// EndpointSlices) and of [`crate::ingress::IngressSnapshot::build`] (all of it).
#[derive(Debug, Clone, Default)]
pub struct ObjectSet {
    pub services: Vec<Sourced<Service>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    pub ingresses: Vec<Sourced<Ingress>>,
    /// Cluster-scoped: no namespace.
    pub ingress_classes: Vec<Sourced<IngressClass>>,
    /// `stringData` already merged into `data` by the source.
    pub secrets: Vec<Sourced<Secret>>,
    pub config_maps: Vec<Sourced<ConfigMap>>,
}

/// Names a Kubernetes object in messages: `Service default/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One thing wrong with the input, naming the file, the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub origin: Origin,
    pub object: Option<ObjectRef>,
    /// Path of the field, e.g. `spec.ports[0].port`; empty when the object as a whole is meant.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

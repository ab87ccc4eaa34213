//! Sources turn the outside world into typed Kubernetes objects. They never open sockets for
//! traffic.

mod manifest;
mod watch;

pub use manifest::{ManifestDir, ParsedObject, SourceError};
pub use watch::watch_dir;

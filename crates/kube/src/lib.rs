//! rvs and the Kubernetes API: watchers and reflectors that feed the model the same
//! [`rvs_model::ObjectSet`] a manifest directory gives, the leader election, and the Ingress
//! status the leader writes. Nothing here carries traffic.

mod lease;
mod metrics;
mod status;
mod watch;

use std::path::Path;

pub use kube::Client;
pub use lease::{run_election, LeaseConfig};
pub use metrics::WatchMetrics;
pub use status::{load_balancer_status, run_status, status_matches, PublishFrom, StatusConfig};
pub use watch::{node_zone, ApiSource, WatchOptions, WatchScope};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (not in a cluster and no kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or else the in-cluster configuration (the service account),
/// or else `$KUBECONFIG` / `~/.kube/config`.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, ConnectError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let loaded = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(loaded, &Default::default())
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await?,
    };
    // A half-open connection (a node or API server gone without a reset) must not hang a
    // watch forever: watches end by themselves after at most 290 s (kube-rs asks for that),
    // and bookmarks arrive about every minute, so 5 minutes without a byte is a dead peer.
    config.read_timeout = Some(std::time::Duration::from_secs(300));
    Ok(Client::try_from(config)?)
}

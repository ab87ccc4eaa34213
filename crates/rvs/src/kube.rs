//! `rvs run --kube`: the Kubernetes API as the source, batched into snapshots, and the
//! leader's Ingress status.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rvs_kube::{
    ApiSource, LeaseConfig, PublishFrom, StatusConfig, WatchMetrics, WatchOptions, WatchScope,
};
use rvs_model::ingress::IngressSnapshot;
use rvs_model::ObjectSet;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Args)]
pub struct KubeArgs {
    /// Read Services, EndpointSlices, Ingresses... from the Kubernetes API (in-cluster
    /// service account, or --kubeconfig) instead of a directory.
    #[arg(long)]
    pub kube: bool,
    /// The kubeconfig to use (implies --kube).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (Services, EndpointSlices, Ingresses, Secrets).
    #[arg(long, value_name = "NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Changes are applied at most this often; a change after a quiet period applies at once.
    #[arg(long, default_value = "100ms", value_parser = crate::parse_duration)]
    pub min_sync_period: Duration,
    /// Addresses written to the status of served Ingresses (IPs or host names, comma
    /// separated); default: the host IPs of the pods matched by --publish-selector.
    #[arg(long, value_delimiter = ',')]
    pub publish_address: Vec<String>,
    /// The gateway's pods (in --pod-namespace), whose nodes' addresses go to Ingress status.
    #[arg(long, default_value = "app.kubernetes.io/name=rvs")]
    pub publish_selector: String,
    /// The Lease (in --pod-namespace) electing the one instance that writes Ingress status.
    #[arg(long, default_value = "rvs-leader")]
    pub election_id: String,
    /// This pod's name: its identity in the election (from the downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's namespace (from the downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// How often the leader re-checks Ingress status when nothing changed.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub status_update_period: Duration,
}

/// The API source with its batching, and the status writer beside it.
pub struct ApiFeed {
    source: ApiSource,
    min_sync_period: Duration,
    last_sync: Option<Instant>,
    /// A change is waiting to be applied at this time.
    due: Option<Instant>,
    /// What the gateway serves, for the status writer.
    served: watch::Sender<Vec<(String, String)>>,
    stop: watch::Sender<bool>,
    election: Option<JoinHandle<()>>,
    status: Option<JoinHandle<()>>,
}

impl ApiFeed {
    pub async fn start(
        args: &KubeArgs,
        configmap: Option<(String, String)>,
        node_name: Option<String>,
        metrics: WatchMetrics,
    ) -> anyhow::Result<ApiFeed> {
        let client = rvs_kube::connect(args.kubeconfig.as_deref())
            .await
            .context("--kube")?;
        let source = ApiSource::start(
            client.clone(),
            &WatchOptions {
                namespace: args.watch_namespace.clone(),
                configmap,
                node_name,
                scope: WatchScope::All,
            },
            metrics,
        );
        let (served, served_rx) = watch::channel(Vec::new());
        let (stop, stop_rx) = watch::channel(false);
        let mut feed = ApiFeed {
            source,
            min_sync_period: args.min_sync_period,
            last_sync: None,
            due: None,
            served,
            stop,
            election: None,
            status: None,
        };
        let (Some(namespace), Some(identity)) = (&args.pod_namespace, &args.pod_name) else {
            tracing::info!("no POD_NAMESPACE and POD_NAME: Ingress status is not written");
            return Ok(feed);
        };
        let publish = if args.publish_address.is_empty() {
            PublishFrom::Pods {
                namespace: namespace.clone(),
                label_selector: args.publish_selector.clone(),
            }
        } else {
            for a in &args.publish_address {
                if a.parse::<IpAddr>().is_err() && !is_dns_name(a) {
                    anyhow::bail!("--publish-address {a:?}: not an IP address or a host name");
                }
            }
            PublishFrom::Addresses(args.publish_address.clone())
        };
        let (leading_tx, leading_rx) = watch::channel(false);
        feed.election = Some(tokio::spawn(rvs_kube::run_election(
            client.clone(),
            LeaseConfig::new(
                namespace.clone(),
                args.election_id.clone(),
                identity.clone(),
            ),
            leading_tx,
            stop_rx.clone(),
        )));
        feed.status = Some(tokio::spawn(rvs_kube::run_status(
            client,
            feed.source.ingresses().clone(),
            served_rx,
            leading_rx,
            StatusConfig {
                publish,
                period: args.status_update_period,
            },
            stop_rx,
        )));
        Ok(feed)
    }

    /// Waits until there is something to apply: every kind listed once, and at least
    /// `--min-sync-period` since the last sync (kube-proxy's minSyncPeriod). Cancel-safe: a
    /// change seen before the wait was cut short is remembered.
    pub async fn changed(&mut self) {
        if self.due.is_none() {
            loop {
                self.source.changed().await;
                if self.source.synced() {
                    break;
                }
            }
            let earliest = self
                .last_sync
                .map_or_else(Instant::now, |last| last + self.min_sync_period);
            self.due = Some(earliest);
        }
        if let Some(due) = self.due {
            tokio::time::sleep_until(due.into()).await;
        }
    }

    pub fn synced(&self) -> bool {
        self.source.synced()
    }

    /// Everything watched now, and when the events it includes arrived.
    pub fn take(&mut self) -> (ObjectSet, Vec<Instant>) {
        self.last_sync = Some(Instant::now());
        self.due = None;
        let pending = self.source.take_pending();
        (self.source.objects(), pending)
    }

    /// The events taken are in force now (or, when not, wait for the next try).
    pub fn applied(&self, pending: Vec<Instant>, in_force: bool) {
        if in_force {
            self.source.applied(&pending);
        } else {
            self.source.requeue(pending);
        }
    }

    /// This node's zone label, once the node is listed.
    pub fn node_zone(&self) -> Option<String> {
        self.source.node().as_deref().and_then(rvs_kube::node_zone)
    }

    /// Tells the status writer which Ingresses the gateway serves.
    pub fn served(&self, snapshot: Option<&IngressSnapshot>) {
        let mut now: Vec<(String, String)> = snapshot
            .map(|s| {
                s.ingresses
                    .iter()
                    .map(|i| (i.ingress.namespace.clone(), i.ingress.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        now.sort();
        self.served.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                *old = std::mem::take(&mut now);
            }
            changed
        });
    }

    /// Stops the election (a leader releases its lease) and the status writer.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in [self.election.take(), self.status.take()]
            .into_iter()
            .flatten()
        {
            if tokio::time::timeout(Duration::from_secs(3), task)
                .await
                .is_err()
            {
                tracing::warn!("the lease was not released in time");
            }
        }
    }
}

/// A DNS name as a status hostname must be: labels of letters, digits and dashes.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

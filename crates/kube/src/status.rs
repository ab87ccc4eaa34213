//! `status.loadBalancer.ingress` of the Ingresses the gateway serves, written by the leader.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use kube::api::{ListParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::sync::watch;

/// Where the published addresses come from.
#[derive(Debug, Clone)]
pub enum PublishFrom {
    /// `--publish-address`: fixed IPs or host names (a load balancer in front).
    Addresses(Vec<String>),
    /// The nodes running the gateway: the host IPs of the pods matching a label selector in a
    /// namespace (with hostNetwork, a pod's host IP is its node's address).
    Pods {
        namespace: String,
        label_selector: String,
    },
}

#[derive(Debug, Clone)]
pub struct StatusConfig {
    pub publish: PublishFrom,
    /// How often the leader checks even when nothing changed (pods come and go).
    pub period: Duration,
}

/// The load-balancer status for these addresses: IPs as `ip`, the rest as `hostname`,
/// sorted and without duplicates so that equal sets compare equal.
pub fn load_balancer_status(addresses: &[String]) -> IngressLoadBalancerStatus {
    let unique: BTreeSet<&str> = addresses
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .collect();
    let mut ips: Vec<IpAddr> = unique.iter().filter_map(|a| a.parse().ok()).collect();
    ips.sort();
    let hostnames = unique.iter().filter(|a| a.parse::<IpAddr>().is_err());
    let ingress: Vec<IngressLoadBalancerIngress> = ips
        .into_iter()
        .map(|ip| IngressLoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..Default::default()
        })
        .chain(hostnames.map(|h| IngressLoadBalancerIngress {
            hostname: Some(h.to_string()),
            ..Default::default()
        }))
        .collect();
    IngressLoadBalancerStatus {
        ingress: (!ingress.is_empty()).then_some(ingress),
    }
}

/// Whether `ingress` already shows `wanted`.
pub fn status_matches(ingress: &Ingress, wanted: &IngressLoadBalancerStatus) -> bool {
    let current = ingress
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .filter(|i| !i.is_empty());
    current == wanted.ingress.as_ref()
}

/// Keeps the status of the served Ingresses (`served`: namespace, name) up to date while
/// `leading` is true, until `stop`.
pub async fn run_status(
    client: Client,
    ingresses: Store<Ingress>,
    mut served: watch::Receiver<Vec<(String, String)>>,
    mut leading: watch::Receiver<bool>,
    config: StatusConfig,
    mut stop: watch::Receiver<bool>,
) {
    // What this leader published last, to clear Ingresses that are no longer served.
    let mut published: Vec<(String, String)> = Vec::new();
    let mut last_wanted = load_balancer_status(&[]);
    loop {
        if *leading.borrow_and_update() {
            match addresses(&client, &config.publish).await {
                Ok(addresses) => {
                    let wanted = load_balancer_status(&addresses);
                    let targets = served.borrow_and_update().clone();
                    write_where(&client, &ingresses, &targets, &wanted, &leading, |i| {
                        !status_matches(i, &wanted)
                    })
                    .await;
                    let dropped: Vec<(String, String)> = published
                        .iter()
                        .filter(|p| !targets.contains(p))
                        .cloned()
                        .collect();
                    // Ingresses no longer served lose the addresses this gateway wrote
                    // (ingress-nginx does the same when an Ingress changes class); one
                    // showing other addresses is someone else's.
                    let none = load_balancer_status(&[]);
                    write_where(&client, &ingresses, &dropped, &none, &leading, |i| {
                        status_matches(i, &last_wanted) && !status_matches(i, &none)
                    })
                    .await;
                    published = targets;
                    last_wanted = wanted;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ingress status: cannot find the gateway's addresses")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.period) => {}
            Ok(()) = served.changed() => {}
            Ok(()) = leading.changed() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn addresses(client: &Client, publish: &PublishFrom) -> Result<Vec<String>, kube::Error> {
    match publish {
        PublishFrom::Addresses(addresses) => Ok(addresses.clone()),
        PublishFrom::Pods {
            namespace,
            label_selector,
        } => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let list = pods
                .list(&ListParams::default().labels(label_selector))
                .await?;
            Ok(list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.status.as_ref()?.host_ip.clone())
                .collect())
        }
    }
}

/// Writes `wanted` to each of `targets` whose current version `needs` it.
async fn write_where(
    client: &Client,
    ingresses: &Store<Ingress>,
    targets: &[(String, String)],
    wanted: &IngressLoadBalancerStatus,
    leading: &watch::Receiver<bool>,
    needs: impl Fn(&Ingress) -> bool,
) {
    for (namespace, name) in targets {
        let Some(current) = ingresses.get(&ObjectRef::new(name).within(namespace)) else {
            continue;
        };
        if needs(&current) {
            write_status(client, &current, wanted, leading).await;
        }
    }
}

async fn write_status(
    client: &Client,
    current: &Ingress,
    wanted: &IngressLoadBalancerStatus,
    leading: &watch::Receiver<bool>,
) {
    // Leadership can end between two writes: a former leader must not keep writing.
    if !*leading.borrow() {
        return;
    }
    let namespace = current.metadata.namespace.clone().unwrap_or_default();
    let name = current.metadata.name.clone().unwrap_or_default();
    let mut updated = current.clone();
    updated.status = Some(IngressStatus {
        load_balancer: Some(wanted.clone()),
    });
    let api: Api<Ingress> = Api::namespaced(client.clone(), &namespace);
    // A conflict means the Ingress changed meanwhile: the next round sees the new one.
    match api
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            tracing::info!(ingress = %format!("{namespace}/{name}"), addresses = ?wanted.ingress, "ingress status updated")
        }
        Err(e) => {
            tracing::warn!(ingress = %format!("{namespace}/{name}"), error = %e, "ingress status: update failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_sorted_unique_ips_then_hostnames() {
        let status = load_balancer_status(&[
            "10.0.0.2".into(),
            "lb.example.com".into(),
            "10.0.0.1".into(),
            "10.0.0.2".into(),
            " ".into(),
            "2001:db8::1".into(),
        ]);
        let got: Vec<(Option<String>, Option<String>)> = status
            .ingress
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.ip, i.hostname))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("10.0.0.1".into()), None),
                (Some("10.0.0.2".into()), None),
                (Some("2001:db8::1".into()), None),
                (None, Some("lb.example.com".into())),
            ]
        );
    }

    #[test]
    fn no_addresses_is_an_empty_status_and_matches_an_empty_one() {
        let wanted = load_balancer_status(&[]);
        assert_eq!(wanted.ingress, None);
        let mut ingress = Ingress::default();
        assert!(status_matches(&ingress, &wanted));
        ingress.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![]),
            }),
        });
        assert!(status_matches(&ingress, &wanted));
        let some = load_balancer_status(&["10.0.0.1".into()]);
        assert!(!status_matches(&ingress, &some));
    }
}

//! Leader election with a coordination.k8s.io Lease, as client-go's leaderelection does it:
//! the holder renews the lease; the others take it over once its record has not changed for
//! a whole lease duration *as they observed it* (their own clock, so clock skew between nodes
//! does not matter); every write carries the resourceVersion read, so two candidates cannot
//! both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    /// The Lease's name (ingress-nginx's `--election-id`).
    pub name: String,
    /// This candidate (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// A leader that could not renew for this long steps down.
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: String, name: String, identity: String) -> LeaseConfig {
        LeaseConfig {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The lease record as last observed, and when this candidate observed it change.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// Campaigns until `stop` turns true; `leading` says whether this candidate leads. On stop a
/// leader releases the lease so another candidate takes over at once.
pub async fn run_election(
    client: Client,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renew: Option<Instant> = None;
    loop {
        // Each attempt is bounded as client-go bounds a renewal: a request that hangs must
        // not keep a leader believing it leads while another takes over.
        let attempt = tokio::time::timeout(
            config.renew_deadline,
            try_acquire_or_renew(&api, &config, &mut observed),
        )
        .await
        .unwrap_or_else(|_| Err(AttemptError::TimedOut));
        match attempt {
            Ok(true) => {
                last_renew = Some(Instant::now());
                if !*leading.borrow() {
                    tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
                    let _ = leading.send(true);
                }
            }
            Ok(false) => {
                if *leading.borrow() {
                    tracing::warn!(lease = %config.name, "lost the lease to another candidate");
                    let _ = leading.send(false);
                }
            }
            Err(e) => {
                let overdue = last_renew.is_none_or(|t| t.elapsed() >= config.renew_deadline);
                if *leading.borrow() && overdue {
                    tracing::warn!(lease = %config.name, error = %e, "could not renew the lease in time; stepping down");
                    let _ = leading.send(false);
                } else {
                    tracing::debug!(lease = %config.name, error = %e, "lease request failed");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_period) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if *leading.borrow() {
        if let Err(e) = release(&api, &config).await {
            tracing::warn!(lease = %config.name, error = %e, "could not release the lease");
        }
        let _ = leading.send(false);
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within the renew deadline")]
    TimedOut,
}

/// A write's outcome: won, or lost to another writer (409: created first, or changed since
/// it was read).
fn won(result: Result<Lease, kube::Error>) -> Result<bool, AttemptError> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, AttemptError> {
    let seconds = i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return won(api.create(&PostParams::default(), &lease).await);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let changed = observed
        .as_ref()
        .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
    if changed {
        *observed = Some(Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.clone(),
            at: Instant::now(),
        });
    }
    let held_by_me = holder.as_deref() == Some(config.identity.as_str());
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(config.lease_duration);
    let expired = holder.is_none()
        || observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() >= duration);
    if !held_by_me && !expired {
        return Ok(false);
    }
    if !held_by_me {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(now());
        tracing::info!(lease = %config.name, previous = ?holder, "taking over the lease");
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now());
    won(api
        .replace(&config.name, &PostParams::default(), &lease)
        .await)
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    // As client-go's ReleaseOnCancel: no holder, and a 1 s lease for readers of old clients.
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    tracing::info!(lease = %config.name, "released the lease");
    Ok(())
}

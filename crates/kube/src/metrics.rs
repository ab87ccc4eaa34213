//! Metrics of the API source: watch restarts, events, and how long an event takes to reach
//! the data plane.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    resource: &'static str,
    /// `error` (a failed or dropped watch, retried with backoff) or `relist` (410 Gone).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

/// Cheap to clone: all clones count into the same metrics.
#[derive(Clone)]
pub struct WatchMetrics {
    restarts: Family<RestartLabels, Counter>,
    events: Family<ResourceLabels, Counter>,
    pub(crate) event_to_applied: Histogram,
}

impl Default for WatchMetrics {
    fn default() -> Self {
        WatchMetrics {
            restarts: Family::default(),
            events: Family::default(),
            // 1 ms to ~16 s: a healthy apply is milliseconds, a batch under load is seconds.
            event_to_applied: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        }
    }
}

impl WatchMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rvs_kube_watch_restarts",
            "Watches of the Kubernetes API restarted, by resource and reason (error, relist)",
            self.restarts.clone(),
        );
        registry.register(
            "rvs_kube_events",
            "Watch events received (added, modified, deleted), by resource",
            self.events.clone(),
        );
        registry.register(
            "rvs_kube_event_to_applied_seconds",
            "Delay from receiving a watch event to the data plane applying it",
            self.event_to_applied.clone(),
        );
    }

    pub(crate) fn restart(&self, resource: &'static str, reason: &'static str) {
        self.restarts
            .get_or_create(&RestartLabels { resource, reason })
            .inc();
    }

    pub(crate) fn event(&self, resource: &'static str) {
        self.events
            .get_or_create(&ResourceLabels { resource })
            .inc();
    }

    /// Restarts so far for one resource and reason (tests read it).
    pub fn restarts(&self, resource: &'static str, reason: &'static str) -> u64 {
        self.restarts
            .get_or_create(&RestartLabels { resource, reason })
            .get()
    }
}

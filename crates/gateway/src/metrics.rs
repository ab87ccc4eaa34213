//! The gateway's metrics under ingress-nginx's names and labels, so its Grafana dashboards
//! work unchanged, plus rvs's upstream pool gauges.
//!
//! A request's metric handles are cached by (snapshot version, route, status, method,
//! canary): the label strings are built once per combination, not per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::pool::PoolStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: String,
    pub status: String,
    pub method: String,
    pub path: String,
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub canary: String,
}

/// A counter exposed without the `_total` suffix OpenMetrics gives counters:
/// ingress-nginx's `nginx_ingress_controller_requests` has none, and dashboards query it so.
#[derive(Clone, Debug, Default)]
pub struct BareCounter(Arc<AtomicU64>);

impl BareCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl prometheus_client::metrics::TypedMetric for BareCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for BareCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // Prometheus' default buckets, which ingress-nginx uses.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(10.0, 10.0, 7))
}

/// Handles for one label combination.
pub struct RequestMetrics {
    pub requests: BareCounter,
    pub request_duration: Histogram,
    pub response_duration: Histogram,
    pub connect_duration: Histogram,
    pub request_size: Histogram,
    pub response_size: Histogram,
}

/// What identifies a cached label combination.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub version: u64,
    /// Address of the route (and vhost) in that snapshot version: unique while it lives.
    pub route: usize,
    pub host: usize,
    pub status: u16,
    pub method: u8,
    pub canary: bool,
}

/// The labels ingress-nginx puts on every metric of a controller; its Grafana dashboards
/// build their selectors from them (`label_values(..., controller_class)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerLabels {
    /// The pod's namespace (`POD_NAMESPACE`; empty outside a cluster).
    pub namespace: String,
    /// The IngressClass controller served.
    pub class: String,
    /// The pod's name (`POD_NAME`; empty outside a cluster).
    pub pod: String,
}

impl Default for ControllerLabels {
    fn default() -> Self {
        ControllerLabels {
            namespace: String::new(),
            class: rvs_model::ingress::CONTROLLER.to_string(),
            pod: String::new(),
        }
    }
}

#[derive(Clone)]
#[allow(clippy::new_without_default)]
pub struct Metrics {
    controller: ControllerLabels,
    requests: Family<RequestLabels, BareCounter>,
    request_duration: HistogramFamily,
    response_duration: HistogramFamily,
    connect_duration: HistogramFamily,
    request_size: HistogramFamily,
    response_size: HistogramFamily,
    pub reload_successful: Gauge,
    pub reload_timestamp: Gauge,
    pub config_hash: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub client_connections: Gauge,
    /// Idle plain HTTP/1.1 client connections parked without hyper's buffers.
    pub parked_connections: Gauge,
    pub access_log_dropped: Counter,
    pool: Arc<PoolStats>,
    cache: Arc<Mutex<HashMap<CacheKey, Arc<RequestMetrics>>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn pool_stats(&self) -> Arc<PoolStats> {
        self.pool.clone()
    }

    pub fn new() -> Self {
        let pool = Arc::new(PoolStats::default());
        Metrics {
            controller: ControllerLabels::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            response_duration: Family::new_with_constructor(duration_histogram),
            connect_duration: Family::new_with_constructor(duration_histogram),
            request_size: Family::new_with_constructor(size_histogram),
            response_size: Family::new_with_constructor(size_histogram),
            reload_successful: Gauge::default(),
            reload_timestamp: Gauge::default(),
            config_hash: Gauge::default(),
            reloads: Family::default(),
            client_connections: Gauge::default(),
            parked_connections: Gauge::default(),
            access_log_dropped: Counter::default(),
            pool,
            cache: Arc::default(),
        }
    }

    /// The handles for `key`, made with `labels()` the first time.
    pub fn request(
        &self,
        key: CacheKey,
        labels: impl FnOnce() -> RequestLabels,
    ) -> Arc<RequestMetrics> {
        if let Ok(cache) = self.cache.lock() {
            if let Some(m) = cache.get(&key) {
                return m.clone();
            }
        }
        let labels = labels();
        let handles = Arc::new(RequestMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            request_duration: self.request_duration.get_or_create(&labels).clone(),
            response_duration: self.response_duration.get_or_create(&labels).clone(),
            connect_duration: self.connect_duration.get_or_create(&labels).clone(),
            request_size: self.request_size.get_or_create(&labels).clone(),
            response_size: self.response_size.get_or_create(&labels).clone(),
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, handles.clone());
        }
        handles
    }

    /// A new snapshot: cached handles of older versions go.
    pub fn new_version(&self, version: u64) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|k, _| k.version >= version);
        }
    }

    /// The controller labels every metric carries (see [`ControllerLabels`]).
    pub fn with_controller(mut self, controller: ControllerLabels) -> Self {
        self.controller = controller;
        self
    }

    pub fn register(&self, registry: &mut Registry) {
        let ControllerLabels {
            namespace,
            class,
            pod,
        } = self.controller.clone();
        let registry = registry.sub_registry_with_labels(
            [
                ("controller_namespace".into(), namespace.into()),
                ("controller_class".into(), class.into()),
                ("controller_pod".into(), pod.into()),
            ]
            .into_iter(),
        );
        let nginx = registry.sub_registry_with_prefix("nginx_ingress_controller");
        nginx.register(
            "requests",
            "The total number of client requests",
            self.requests.clone(),
        );
        nginx.register(
            "request_duration_seconds",
            "The request processing time in seconds (first byte read to last byte sent)",
            self.request_duration.clone(),
        );
        nginx.register(
            "response_duration_seconds",
            "The time spent receiving the response from the upstream server in seconds",
            self.response_duration.clone(),
        );
        nginx.register(
            "connect_duration_seconds",
            "The time spent on establishing a connection with the upstream server",
            self.connect_duration.clone(),
        );
        nginx.register(
            "request_size",
            "The request length (including request line, header, and request body)",
            self.request_size.clone(),
        );
        nginx.register(
            "response_size",
            "The response length (including request line, header, and request body)",
            self.response_size.clone(),
        );
        nginx.register(
            "config_last_reload_successful",
            "Whether the last configuration reload attempt was successful",
            self.reload_successful.clone(),
        );
        nginx.register(
            "config_last_reload_successful_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            self.reload_timestamp.clone(),
        );
        nginx.register(
            "config_hash",
            "Running configuration hash actually running",
            self.config_hash.clone(),
        );
        nginx.register(
            "nginx_process_connections",
            "Current number of client connections",
            self.client_connections.clone(),
        );
        let rvs = registry.sub_registry_with_prefix("rvs_gateway");
        rvs.register(
            "parked_client_connections",
            "Idle HTTP/1.1 client connections holding no buffers (parked after 1 s idle)",
            self.parked_connections.clone(),
        );
        rvs.register(
            "config_reloads",
            "Routing table swaps by result",
            self.reloads.clone(),
        );
        rvs.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        rvs.register_collector(Box::new(PoolCollector(self.pool.clone())));
    }
}

/// Reads the pool's counters at scrape time.
#[derive(Debug)]
struct PoolCollector(Arc<PoolStats>);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = &self.0;
        let idle = stats.idle.load(Ordering::Relaxed) as i64;
        let active = stats.active.load(Ordering::Relaxed) as i64;
        let parked = stats.parked.load(Ordering::Relaxed) as i64;
        let opened = stats.opened.load(Ordering::Relaxed);
        let reused = stats.reused.load(Ordering::Relaxed);
        let gauges = [
            (
                "upstream_idle_connections",
                "Kept-alive upstream connections waiting for a request",
                idle,
            ),
            (
                "upstream_parked_connections",
                "Kept-alive upstream HTTP/1.1 connections idle long enough to hold no buffers \
                 (counted in upstream_idle_connections too)",
                parked,
            ),
            (
                "upstream_active_connections",
                "Upstream HTTP/1.1 connections serving a request",
                active,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let counters = [
            (
                "upstream_connections_opened",
                "Upstream connections opened",
                opened,
            ),
            (
                "upstream_requests_reused",
                "Upstream requests sent on a kept-alive connection",
                reused,
            ),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        // Every upstream request either reused a connection or opened one.
        let ratio = if reused + opened == 0 {
            0.0
        } else {
            reused as f64 / (reused + opened) as f64
        };
        let metric = ConstGauge::new(ratio);
        metric.encode(encoder.encode_descriptor(
            "upstream_reuse_ratio",
            "Share of upstream requests that reused a kept-alive connection",
            None,
            metric.metric_type(),
        )?)
    }
}

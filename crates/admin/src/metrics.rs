//! `/metrics`: a prometheus-client [`Collector`] that reads the source at scrape time, so
//! label sets of real servers that are gone disappear with them.
//!
//! The IPVS metrics carry node_exporter's names and labels (collector `ipvs`), so dashboards
//! built for kernel IPVS work unchanged. Counters are described to prometheus-client without
//! their `_total` suffix: the OpenMetrics encoder appends it to the samples.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use rvs_model::status::ServiceTable;

use crate::addr::split_host_port;
use crate::table::state_name;
use crate::{AdminSource, ConfigStatus};

/// The content type of what [`encode_metrics`] returns (prometheus-client encodes
/// OpenMetrics text, which Prometheus scrapes natively).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the collector for `source`.
pub(crate) fn registry(source: Arc<dyn AdminSource>) -> Registry {
    let mut registry = Registry::default();
    source.register_metrics(&mut registry);
    registry.register_collector(Box::new(AdminCollector { source }));
    registry
}

/// Encodes the metrics of `source` as OpenMetrics text, as `/metrics` serves them.
pub fn encode_metrics(source: Arc<dyn AdminSource>) -> Result<String, fmt::Error> {
    encode_registry(&registry(source))
}

pub(crate) fn encode_registry(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

struct AdminCollector {
    source: Arc<dyn AdminSource>,
}

impl fmt::Debug for AdminCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminCollector").finish_non_exhaustive()
    }
}

impl Collector for AdminCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let table = self.source.table();
        let config = self.source.config();
        encode_ipvs(&mut encoder, &table)?;
        encode_config(&mut encoder, &config, &table)
    }
}

/// node_exporter's backend labels, in its order.
const IPVS_LABELS: [&str; 6] = [
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
];

type IpvsKey = [String; 6];
/// [`IpvsKey`] plus `service` and `state`.
type RvsKey = [String; 8];

#[derive(Default, Clone, Copy)]
struct IpvsValues {
    active: u64,
    inactive: u64,
    weight: u64,
}

#[derive(Default, Clone, Copy)]
struct RvsValues {
    connections: u64,
    bytes_in: u64,
    bytes_out: u64,
}

/// Rows summed by label set, in first-seen order: two entries with the same labels would
/// make an invalid exposition (node_exporter sums them the same way).
struct Summed<K, V> {
    rows: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone, V: Default> Summed<K, V> {
    fn new() -> Self {
        Summed {
            rows: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn entry(&mut self, key: K) -> &mut V {
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.index.insert(key.clone(), self.rows.len());
                self.rows.push((key, V::default()));
                self.rows.len() - 1
            }
        };
        &mut self.rows[i].1
    }
}

fn labels<'a, const N: usize>(
    names: [&'static str; N],
    values: &'a [String; N],
) -> [(&'static str, &'a str); N] {
    let mut i = 0;
    names.map(|name| {
        let pair = (name, values[i].as_str());
        i += 1;
        pair
    })
}

fn encode_ipvs(encoder: &mut DescriptorEncoder, table: &ServiceTable) -> fmt::Result {
    let mut connections = table.retired.connections;
    let mut bytes_in = table.retired.bytes_in;
    let mut bytes_out = table.retired.bytes_out;
    let mut ipvs: Summed<IpvsKey, IpvsValues> = Summed::new();
    let mut rvs: Summed<RvsKey, RvsValues> = Summed::new();

    for vs in &table.services {
        let (local_address, local_port) = split_host_port(&vs.address);
        let proto = vs.protocol.to_string();
        for rs in &vs.real_servers {
            connections = connections.saturating_add(rs.connections);
            bytes_in = bytes_in.saturating_add(rs.bytes_in);
            bytes_out = bytes_out.saturating_add(rs.bytes_out);

            let (remote_address, remote_port) = split_host_port(&rs.address);
            let key: IpvsKey = [
                local_address.clone(),
                local_port.clone(),
                remote_address,
                remote_port,
                proto.clone(),
                String::new(),
            ];
            let [a, b, c, d, e, f] = key.clone();
            let rvs_key: RvsKey = [
                a,
                b,
                c,
                d,
                e,
                f,
                vs.service.clone(),
                state_name(rs.state).to_string(),
            ];

            let v = ipvs.entry(key);
            v.active = v.active.saturating_add(rs.active_conns);
            v.inactive = v.inactive.saturating_add(rs.inactive_conns);
            v.weight = v.weight.saturating_add(u64::from(rs.weight));

            let v = rvs.entry(rvs_key);
            v.connections = v.connections.saturating_add(rs.connections);
            v.bytes_in = v.bytes_in.saturating_add(rs.bytes_in);
            v.bytes_out = v.bytes_out.saturating_add(rs.bytes_out);
        }
    }

    single(
        encoder,
        "node_ipvs_connections",
        "The total number of connections made.",
        None,
        ConstCounter::new(connections),
    )?;
    single(
        encoder,
        "node_ipvs_incoming_bytes",
        "The total amount of incoming data.",
        None,
        ConstCounter::new(bytes_in),
    )?;
    single(
        encoder,
        "node_ipvs_outgoing_bytes",
        "The total amount of outgoing data.",
        None,
        ConstCounter::new(bytes_out),
    )?;

    let ipvs_family = |encoder: &mut DescriptorEncoder,
                       name: &'static str,
                       help: &str,
                       value: fn(&IpvsValues) -> u64|
     -> fmt::Result {
        family(
            encoder,
            name,
            help,
            MetricType::Gauge,
            ipvs.rows
                .iter()
                .map(|(k, v)| (labels(IPVS_LABELS, k), ConstGauge::new(value(v)))),
        )
    };
    ipvs_family(
        encoder,
        "node_ipvs_backend_connections_active",
        "The current active connections by local and remote address.",
        |v| v.active,
    )?;
    ipvs_family(
        encoder,
        "node_ipvs_backend_connections_inactive",
        "The current inactive connections by local and remote address.",
        |v| v.inactive,
    )?;
    ipvs_family(
        encoder,
        "node_ipvs_backend_weight",
        "The current backend weight by local and remote address.",
        |v| v.weight,
    )?;

    const RVS_LABELS: [&str; 8] = [
        IPVS_LABELS[0],
        IPVS_LABELS[1],
        IPVS_LABELS[2],
        IPVS_LABELS[3],
        IPVS_LABELS[4],
        IPVS_LABELS[5],
        "service",
        "state",
    ];
    let rvs_family = |encoder: &mut DescriptorEncoder,
                      name: &'static str,
                      help: &str,
                      value: fn(&RvsValues) -> u64|
     -> fmt::Result {
        family(
            encoder,
            name,
            help,
            MetricType::Counter,
            rvs.rows
                .iter()
                .map(|(k, v)| (labels(RVS_LABELS, k), ConstCounter::new(value(v)))),
        )
    };
    rvs_family(
        encoder,
        "rvs_backend_connections",
        "Connections scheduled to the real server since it appeared.",
        |v| v.connections,
    )?;
    rvs_family(
        encoder,
        "rvs_backend_bytes_in",
        "Bytes from clients to the real server.",
        |v| v.bytes_in,
    )?;
    rvs_family(
        encoder,
        "rvs_backend_bytes_out",
        "Bytes from the real server to clients.",
        |v| v.bytes_out,
    )
}

fn encode_config(
    encoder: &mut DescriptorEncoder,
    config: &ConfigStatus,
    table: &ServiceTable,
) -> fmt::Result {
    single(
        encoder,
        "rvs_config_version",
        "Version of the configuration snapshot in force.",
        None,
        ConstGauge::new(config.version),
    )?;
    single(
        encoder,
        "rvs_config_last_reload_successful",
        "Whether the last configuration reload attempt was successful.",
        None,
        ConstGauge::new(u64::from(config.last_reload_successful)),
    )?;
    single(
        encoder,
        "rvs_config_last_reload_success_timestamp",
        "Timestamp of the last successful configuration reload.",
        Some(&Unit::Seconds),
        ConstGauge::new(config.last_reload_unix_seconds),
    )?;
    single(
        encoder,
        "rvs_config_reloads",
        "Configuration reload attempts.",
        None,
        ConstCounter::new(config.reloads_total),
    )?;
    single(
        encoder,
        "rvs_config_reload_failures",
        "Failed configuration reload attempts.",
        None,
        ConstCounter::new(config.reload_failures_total),
    )?;
    single(
        encoder,
        "rvs_config_problems",
        "Problems found in the configuration in force.",
        None,
        ConstGauge::new(config.problems.len() as u64),
    )?;
    single(
        encoder,
        "rvs_virtual_services",
        "Virtual services in the live table.",
        None,
        ConstGauge::new(table.services.len() as u64),
    )
}

fn single(
    encoder: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    unit: Option<&'static Unit>,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    metric_type: MetricType,
    rows: impl Iterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric_encoder = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in rows {
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rvs_model::status::{RealServerStatus, ServerDisplayState, VirtualServiceStatus};
    use rvs_model::{FrontendKind, Protocol};

    use super::*;

    struct Fixed(ServiceTable);

    impl AdminSource for Fixed {
        fn table(&self) -> ServiceTable {
            self.0.clone()
        }
        fn ready(&self) -> bool {
            true
        }
        fn config(&self) -> ConfigStatus {
            ConfigStatus::default()
        }
    }

    fn vs(address: &str, service: &str, weight: u32) -> VirtualServiceStatus {
        VirtualServiceStatus {
            protocol: Protocol::Tcp,
            address: address.to_string(),
            kind: FrontendKind::NodePort,
            service: service.to_string(),
            scheduler: "rr".to_string(),
            scheduler_flags: vec![],
            persistence_seconds: None,
            real_servers: vec![RealServerStatus {
                address: "10.244.0.5:8080".to_string(),
                weight,
                active_conns: 1,
                inactive_conns: 0,
                connections: 4,
                bytes_in: 10,
                bytes_out: 20,
                state: ServerDisplayState::Ready,
            }],
        }
    }

    fn metrics(services: Vec<VirtualServiceStatus>) -> String {
        let table = ServiceTable {
            engine: "userspace".to_string(),
            config_version: 1,
            services,
            retired: Default::default(),
        };
        encode_metrics(Arc::new(Fixed(table))).unwrap()
    }

    #[test]
    fn same_labels_are_summed_into_one_series() {
        let text = metrics(vec![
            vs("*:30080", "a/x:http", 1),
            vs("*:30080", "a/y:http", 2),
        ]);
        let weights: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("node_ipvs_backend_weight{"))
            .collect();
        assert_eq!(
            weights,
            [
                "node_ipvs_backend_weight{local_address=\"0.0.0.0\",local_port=\"30080\",\
              remote_address=\"10.244.0.5\",remote_port=\"8080\",proto=\"TCP\",local_mark=\"\"} 3"
            ]
        );
        // Our own series tell the services apart.
        let ours = text
            .lines()
            .filter(|l| l.starts_with("rvs_backend_connections_total{"))
            .count();
        assert_eq!(ours, 2);
    }

    #[test]
    fn empty_table_still_describes_every_family() {
        let text = metrics(vec![]);
        assert!(text.contains("# TYPE node_ipvs_backend_connections_active gauge\n"));
        assert!(text.contains("# TYPE rvs_backend_bytes_out counter\n"));
        assert!(text.contains("node_ipvs_connections_total 0\n"));
        assert!(text.contains("rvs_virtual_services 0\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn totals_include_what_forgotten_servers_counted() {
        let table = ServiceTable {
            engine: "userspace".to_string(),
            config_version: 1,
            services: Vec::new(),
            retired: rvs_model::status::Totals {
                connections: 5,
                bytes_in: 10,
                bytes_out: 20,
            },
        };
        let text = encode_metrics(Arc::new(Fixed(table))).unwrap();
        assert!(text.contains("node_ipvs_connections_total 5\n"), "{text}");
        assert!(
            text.contains("node_ipvs_incoming_bytes_total 10\n"),
            "{text}"
        );
        assert!(
            text.contains("node_ipvs_outgoing_bytes_total 20\n"),
            "{text}"
        );
    }
}

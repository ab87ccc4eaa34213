//! rvs's admin HTTP API: health and readiness probes, Prometheus metrics named like
//! node_exporter's IPVS collector, and the live table as JSON (`/api/v1/services`), which
//! `rvs ls` fetches ([`fetch_table`]) and prints like `ipvsadm -Ln --stats` ([`format_table`]).
//!
//! Routes (all `GET`, `HEAD` too; other methods get 405, unknown paths 404):
//!
//! | path               | answer                                                        |
//! |--------------------|---------------------------------------------------------------|
//! | `/healthz`         | 200 `ok`                                                      |
//! | `/readyz`          | 200 `ready` or 503 `not ready` ([`AdminSource::ready`])       |
//! | `/metrics`         | OpenMetrics text, read from the source at scrape time         |
//! | `/api/v1/services` | [`ServiceTable`] as JSON                                      |
//! | `/api/v1/connections` | the connection table (`ipvsadm -Lnc`) as JSON              |
//! | `/api/v1/config`   | [`ConfigStatus`] as JSON                                      |

mod addr;
mod client;
mod health;
mod metrics;
mod server;
mod table;

use rvs_model::status::{ConnectionStatus, ServiceTable};
use serde::{Deserialize, Serialize};

pub use client::{fetch_config, fetch_connections, fetch_table, FetchError};
pub use health::{health_response, ServiceHealth, ServiceHealthEntry};
pub use metrics::{encode_metrics, METRICS_CONTENT_TYPE};
pub use server::serve;
pub use table::{format_connections, format_table};

/// What the admin API shows: implemented by the running proxy, read on every request.
pub trait AdminSource: Send + Sync + 'static {
    /// The live table of virtual services and their real servers.
    fn table(&self) -> ServiceTable;
    /// Whether rvs is ready to serve (a first configuration is in force).
    fn ready(&self) -> bool;
    /// The state of configuration loading.
    fn config(&self) -> ConfigStatus;
    /// The connection table; engines without one (the kernel's is conntrack) list none.
    fn connections(&self) -> Vec<ConnectionStatus> {
        Vec::new()
    }
    /// More metrics for `/metrics` (the gateway's), registered once when the server starts.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// The state of configuration loading (`/api/v1/config`, `rvs_config_*` metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Version of the configuration snapshot in force.
    pub version: u64,
    /// Whether the last attempt to load the configuration succeeded.
    pub last_reload_successful: bool,
    /// Unix time of the last successful reload (0 before the first).
    pub last_reload_unix_seconds: f64,
    /// Reload attempts so far.
    pub reloads_total: u64,
    /// Failed reload attempts so far.
    pub reload_failures_total: u64,
    /// Problems found in the configuration in force (objects skipped, bad annotations...).
    pub problems: Vec<String>,
}

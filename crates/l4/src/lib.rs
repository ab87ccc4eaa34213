//! rvs's userspace L4 engine: IPVS's model (virtual services, real servers, schedulers,
//! persistence, a connection table) served by ordinary sockets, so it runs anywhere without
//! privileges.

mod addrs;
mod conn;
mod engine;
mod proxy_protocol;
mod runtime;
mod splice;
mod tcp;
mod udp;
mod vips;

pub use engine::{ApplyError, Engine, EngineConfig};
pub use proxy_protocol::{parse_v2, ProxyHeader};

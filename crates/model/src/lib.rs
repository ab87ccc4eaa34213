//! rvs's domain: virtual services and real servers as IPVS knows them, built by a pure
//! function from the Kubernetes objects a source delivers.

mod build;
pub mod ingress;
mod objects;
pub mod status;
mod types;

pub use build::{BuildOptions, Snapshot, TranslationCache};
pub use objects::{ObjectRef, ObjectSet, Origin, Problem, Sourced};
pub use rvs_sched::{SchedulerConfig, SchedulerFlags, SchedulerKind};
pub use types::{
    EndpointState, Frontend, FrontendKind, IpFamily, Protocol, RealServer, ServiceRef,
    TrafficPolicy, VirtualService,
};

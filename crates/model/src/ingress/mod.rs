//! Ingress objects -> the L7 gateway's routing snapshot.

mod annotations;
mod build;
mod configmap;
mod types;
pub mod values;

pub use annotations::{
    parse_annotations, BasicAuthSource, ParsedAnnotations, NGINX_PREFIX, RVS_PREFIX,
};
pub use build::{is_ours, parse_host};
pub use configmap::{parse_config_map, REFUSED_SNIPPET};
pub use types::*;

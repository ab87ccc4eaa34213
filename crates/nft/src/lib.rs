//! rvs's kernel engine: the model rendered into nftables the way kube-proxy's nftables mode
//! does, applied in single transactions.

mod conntrack;
mod engine;
mod library;
mod listing;
mod netlink;
mod render;
mod ruleset;

pub use engine::{ApplyStats, NftConfig, NftEngine, NftError};
pub use netlink::{encode, Batch, EncodeError};
pub use render::{
    endpoint_chain_name, patch, render, render_cached, render_delta, Delta, RenderCache,
    RenderOptions, HASH_SEED, MASQUERADE_MARK,
};
pub use ruleset::{
    Before, Chain, Element, Existing, Family, Map, Op, Ruleset, Set, SetKind, Table, Transaction,
    Verb, TABLE,
};

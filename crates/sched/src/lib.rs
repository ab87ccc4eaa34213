//! The IPVS schedulers as pure code: each decides as the kernel's
//! `net/netfilter/ipvs/ip_vs_<name>.c` does.
//!
//! Build one with [`new_scheduler`] (or [`new_scheduler_with_clock`] to drive time in tests).
//! `IP_VS_DEST_F_OVERLOAD` (upper thresholds) does not exist here: every listed server is
//! available unless its weight is 0.
//!
//! Where we differ from the kernel, and why:
//! - `update` gets the whole new list at once, where the kernel calls `add/del/upd_dest` per
//!   server; wrr/sh/mh/dh recompute as after the last of those calls, rr keeps its position as
//!   `ip_vs_rr_del_dest` would.
//! - mh: a table size that is not prime is rounded up to the next prime (capped near 2^20,
//!   [`effective_mh_table_size`]); with more servers than slots the table grows to fit instead
//!   of the kernel's `-EINVAL`. Hashing is the kernel's fixed-key `hsiphash` as on 64-bit
//!   little-endian machines, so mappings are stable across restarts.
//! - lblc/lblcr: the GC timer is replayed lazily at its nominal ticks on each `schedule`.
//!   lblcr drops removed servers from its sets at `update` (the kernel keeps them, trashed,
//!   until shed) since their counters are no longer visible. The set shrinks after
//!   `lblcr_expiration` (24 h) without change, as the current kernel code does; 6 min
//!   (`ENTRY_TIMEOUT`) only ages entries out of an over-full table.
//! - twos: the random weights are drawn uniformly in `0..=total` (the kernel's
//!   `prandom_u32() % (total + 1)` has a slight modulo bias).
//! - ovf keeps the kernel's `active > weight` skip, so a server still takes a connection at
//!   `active == weight`.
//! - IPv4-mapped IPv6 addresses hash as the IPv4 address they carry.

mod kind;

pub use kind::{ParseError, SchedulerConfig, SchedulerFlags, SchedulerKind, DEFAULT_MH_TABLE_SIZE};

use std::net::SocketAddr;

/// What a scheduler sees of one real server when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    pub addr: SocketAddr,
    /// 0 = quiesced: takes no new connections.
    pub weight: u32,
    /// IPVS ActiveConn (established connections).
    pub active: u32,
    /// IPVS InActConn (connections in any other state).
    pub inactive: u32,
}

impl Dest {
    /// IPVS's connection overhead: `ActiveConn * 256 + InActConn` (`ip_vs_dest_conn_overhead`).
    pub fn overhead(&self) -> u64 {
        u64::from(self.active) * 256 + u64::from(self.inactive)
    }
}

/// The packet the kernel would schedule: client source and the virtual address it targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub client: SocketAddr,
    pub vip: SocketAddr,
}

/// A scheduler for one virtual service. `dests` is the virtual service's full list of real
/// servers in a stable order, the same slice (same order, same addresses) between two calls
/// to `update`; only the counters change between calls to `schedule`.
pub trait Scheduler: Send {
    /// The real-server set or a weight changed (IPVS `upd_dest`/`add_dest`/`del_dest`).
    fn update(&mut self, dests: &[Dest]);
    /// Picks the index into `dests` for a new connection, or `None` when no server may take
    /// it (IPVS "no destination available").
    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize>;
}

mod clock;
mod dh;
mod fo;
mod hash;
mod lblc;
mod lblcr;
mod lc;
mod locality;
mod mh;
mod nq;
mod ovf;
mod rr;
mod sed;
mod sh;
mod tables;
mod twos;
mod wlc;
mod wrr;

pub use clock::{Clock, ManualClock, SystemClock};
pub use hash::gcd;
pub use mh::effective_mh_table_size;
pub use tables::{maglev_table, sh_table};

use std::sync::Arc;

/// Builds the scheduler `config` names, reading time from the system clock.
pub fn new_scheduler(config: &SchedulerConfig) -> Box<dyn Scheduler> {
    new_scheduler_with_clock(config, Arc::new(SystemClock))
}

/// As [`new_scheduler`], with an injected time source (only `lblc`/`lblcr` read it: their
/// cache entries expire as the kernel's do).
pub fn new_scheduler_with_clock(
    config: &SchedulerConfig,
    clock: Arc<dyn Clock>,
) -> Box<dyn Scheduler> {
    match config.kind {
        SchedulerKind::Rr => Box::new(rr::Rr::default()),
        SchedulerKind::Wrr => Box::new(wrr::Wrr::default()),
        SchedulerKind::Lc => Box::new(lc::Lc),
        SchedulerKind::Wlc => Box::new(wlc::Wlc),
        SchedulerKind::Lblc => Box::new(lblc::Lblc::new(clock)),
        SchedulerKind::Lblcr => Box::new(lblcr::Lblcr::new(clock)),
        SchedulerKind::Dh => Box::new(dh::Dh::default()),
        SchedulerKind::Sh => Box::new(sh::Sh::new(config.flags)),
        SchedulerKind::Sed => Box::new(sed::Sed),
        SchedulerKind::Nq => Box::new(nq::Nq),
        SchedulerKind::Fo => Box::new(fo::Fo),
        SchedulerKind::Ovf => Box::new(ovf::Ovf),
        SchedulerKind::Mh => Box::new(mh::Mh::new(config.flags, config.mh_table_size)),
        SchedulerKind::Twos => Box::new(twos::Twos::new()),
    }
}

/// `a_oh / a_w > b_oh / b_w` compared as the kernel does (`a_oh * b_w > b_oh * a_w`), widened so
/// that no counter or weight can overflow it.
pub(crate) fn load_gt(a_oh: u64, a_w: u32, b_oh: u64, b_w: u32) -> bool {
    u128::from(a_oh) * u128::from(b_w) > u128::from(b_oh) * u128::from(a_w)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::{Dest, Flow};

    /// Real server number `i`, at `10.0.0.<i+1>:80` for small `i`.
    pub fn d(i: u16, weight: u32, active: u32, inactive: u32) -> Dest {
        let [hi, lo] = (i + 1).to_be_bytes();
        Dest {
            addr: std::net::SocketAddr::from(([10, 0, hi, lo], 80)),
            weight,
            active,
            inactive,
        }
    }

    /// Servers with these weights and no connections.
    pub fn weighted(weights: &[u32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| d(i as u16, w, 0, 0))
            .collect()
    }

    pub fn flow(client: &str, vip: &str) -> Flow {
        Flow {
            client: client.parse().expect("client"),
            vip: vip.parse().expect("vip"),
        }
    }

    pub fn any_flow() -> Flow {
        flow("192.0.2.1:40000", "198.51.100.1:80")
    }
}

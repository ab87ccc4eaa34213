//! `ip_vs_dh.c`: destination hashing: the VIP picks one of 256 buckets filled round robin
//! (weights ignored apart from 0, which makes the bucket unavailable: no fallback).

use std::net::IpAddr;

use crate::hash::{addr_fold, GOLDEN_KNUTH};
use crate::{Dest, Flow, Scheduler};

const TAB_SIZE: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Dh {
    /// Bucket -> index into dests; empty when there are no servers.
    table: Vec<usize>,
}

/// `ip_vs_dh_hashkey`.
pub(crate) fn hashkey(ip: IpAddr) -> usize {
    (addr_fold(ip).wrapping_mul(GOLDEN_KNUTH) as usize) & (TAB_SIZE - 1)
}

impl Scheduler for Dh {
    fn update(&mut self, dests: &[Dest]) {
        // ip_vs_dh_assign: bucket i gets the i-th server, cycling through the list.
        self.table = if dests.is_empty() {
            Vec::new()
        } else {
            (0..TAB_SIZE).map(|i| i % dests.len()).collect()
        };
    }

    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize> {
        let i = *self.table.get(hashkey(flow.vip.ip()))?;
        (dests.get(i)?.weight > 0).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flow, weighted};

    #[test]
    fn vip_hash_picks_bucket() {
        // 10.0.0.1 = 0x0a000001; * 2654435761 mod 256 = 0xb1 (177); 177 % 3 = 0.
        assert_eq!(hashkey("10.0.0.1".parse().unwrap()), 177);
        let dests = weighted(&[1, 1, 1]);
        let mut s = Dh::default();
        s.update(&dests);
        let f = flow("192.0.2.7:1234", "10.0.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        // The client does not matter.
        let g = flow("203.0.113.9:1", "10.0.0.1:443");
        assert_eq!(s.schedule(&dests, &g), Some(0));
    }

    #[test]
    fn quiesced_bucket_has_no_fallback() {
        let dests = weighted(&[0, 1, 1]);
        let mut s = Dh::default();
        s.update(&dests);
        assert_eq!(
            s.schedule(&dests, &flow("192.0.2.7:1", "10.0.0.1:80")),
            None
        );
        s.update(&[]);
        assert_eq!(s.schedule(&[], &flow("192.0.2.7:1", "10.0.0.1:80")), None);
    }
}

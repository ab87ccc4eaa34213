//! `ip_vs_sh.c`: source hashing into 256 buckets tiled by weight, with the optional
//! `sh-port` key and `sh-fallback` walk.

use crate::hash::{addr_fold, GOLDEN_KNUTH};
use crate::{Dest, Flow, Scheduler, SchedulerFlags};

const TAB_SIZE: usize = 256;

#[derive(Debug)]
pub(crate) struct Sh {
    flags: SchedulerFlags,
    /// Bucket -> index into dests; empty when there are no servers.
    table: Vec<usize>,
}

impl Sh {
    pub(crate) fn new(flags: SchedulerFlags) -> Self {
        Sh {
            flags,
            table: Vec::new(),
        }
    }
}

/// `ip_vs_sh_hashkey`: `(offset + (port + addr) * 2654435761) & 255`; only the low bits
/// matter, so 32-bit wrapping gives the kernel's value.
fn hashkey(addr: u32, port: u16, offset: u32) -> usize {
    let h = offset.wrapping_add(
        u32::from(port)
            .wrapping_add(addr)
            .wrapping_mul(GOLDEN_KNUTH),
    );
    (h as usize) & (TAB_SIZE - 1)
}

/// `ip_vs_sh_reassign`: each server in list order takes `weight` consecutive buckets (at least
/// one, even at weight 0), cycling until all 256 are filled.
pub(crate) fn reassign(dests: &[Dest]) -> Vec<usize> {
    if dests.is_empty() {
        return Vec::new();
    }
    let mut table = Vec::with_capacity(TAB_SIZE);
    let (mut p, mut d_count) = (0usize, 0u64);
    for _ in 0..TAB_SIZE {
        table.push(p);
        d_count += 1;
        if d_count >= u64::from(dests[p].weight) {
            p = (p + 1) % dests.len();
            d_count = 0;
        }
    }
    table
}

impl Scheduler for Sh {
    fn update(&mut self, dests: &[Dest]) {
        self.table = reassign(dests);
    }

    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize> {
        let addr = addr_fold(flow.client.ip());
        let port = if self.flags.port {
            flow.client.port()
        } else {
            0
        };
        let available = |i: usize| dests.get(i).is_some_and(|d| d.weight > 0);
        let ihash = hashkey(addr, port, 0);
        let first = *self.table.get(ihash)?;
        if available(first) {
            return Some(first);
        }
        if !self.flags.fallback {
            return None;
        }
        // ip_vs_sh_get_fallback: rehash with offsets ihash, ihash+1, ... (mod 256).
        (0..TAB_SIZE as u32)
            .map(|offset| (offset + ihash as u32) % TAB_SIZE as u32)
            .filter_map(|roffset| self.table.get(hashkey(addr, port, roffset)).copied())
            .find(|&i| available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{flow, weighted};

    #[test]
    fn reassign_tiles_by_weight() {
        // Weights 2,0,1: a a b c a a b c ... (weight 0 still takes one bucket).
        let t = reassign(&weighted(&[2, 0, 1]));
        assert_eq!(&t[..8], &[0, 0, 1, 2, 0, 0, 1, 2]);
        assert_eq!(t.len(), 256);
        // A weight above 256 fills the whole table.
        assert!(reassign(&weighted(&[1000, 1])).iter().all(|&i| i == 0));
    }

    #[test]
    fn source_hash_and_port() {
        // 192.0.2.1 = 0xc0000201; bucket = (0xc0000201 * 2654435761) & 255.
        let addr = 0xc000_0201u32;
        let h = (u64::from(addr) * 2_654_435_761) & 255;
        assert_eq!(hashkey(addr, 0, 0) as u64, h);
        let h_port = ((u64::from(addr) + 40000) * 2_654_435_761) & 255;
        assert_eq!(hashkey(addr, 40000, 0) as u64, h_port);

        let dests = weighted(&[1; 256]);
        let mut s = Sh::new(SchedulerFlags::default());
        s.update(&dests);
        // One server per bucket: the pick is the bucket.
        let f = flow("192.0.2.1:40000", "198.51.100.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(h as usize));
        let mut s = Sh::new(SchedulerFlags {
            port: true,
            fallback: false,
        });
        s.update(&dests);
        assert_eq!(s.schedule(&dests, &f), Some(h_port as usize));
    }

    #[test]
    fn fallback_walks_offsets() {
        let f = flow("192.0.2.1:40000", "198.51.100.1:80");
        let addr = 0xc000_0201u32;
        let ihash = hashkey(addr, 0, 0);
        let mut weights = vec![1u32; 256];
        weights[ihash] = 0;
        let dests = weighted(&weights);

        let mut plain = Sh::new(SchedulerFlags::default());
        plain.update(&dests);
        assert_eq!(plain.schedule(&dests, &f), None);

        let mut fb = Sh::new(SchedulerFlags {
            fallback: true,
            port: false,
        });
        fb.update(&dests);
        // Offset 0 gives roffset = ihash: bucket (ihash + hash) & 255.
        let expect = hashkey(addr, 0, ihash as u32);
        assert_ne!(expect, ihash);
        assert_eq!(fb.schedule(&dests, &f), Some(expect));

        let none = weighted(&[0, 0]);
        fb.update(&none);
        assert_eq!(fb.schedule(&none, &f), None);
    }
}

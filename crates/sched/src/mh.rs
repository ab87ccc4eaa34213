//! `ip_vs_mh.c`: Maglev hashing of the client address (and port with `mh-port`), with the
//! optional `mh-fallback` walk.
//!
//! Hashes: the kernel's own `hsiphash` with the fixed keys `ip_vs_mh` sets (not random), so the
//! table is the kernel's for the same server list and stable across restarts.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::hash::{addr_fold, gcd_positive, hsiphash_1u32, next_prime};
use crate::{Dest, Flow, Scheduler, SchedulerFlags};

/// `generate_hash_secret`.
const HASH1: [u64; 2] = [2_654_435_761, 2_654_435_761];
const HASH2: [u64; 2] = [2_654_446_892, 2_654_446_892];

/// Bounds the memory of one table (the kernel's largest choice is 131071).
const MAX_TABLE_SIZE: u32 = 1 << 20;

/// The table size used for a requested `mh_table_size`: the smallest prime >= it (Maglev needs a
/// prime; 4093 and the kernel's other sizes are prime already), kept within 2..=2^20 + 7.
pub fn effective_mh_table_size(requested: u32) -> u32 {
    next_prime(u64::from(requested.min(MAX_TABLE_SIZE))) as u32
}

#[derive(Debug)]
pub(crate) struct Mh {
    flags: SchedulerFlags,
    size: u32,
    /// Slot -> index into dests; empty when no server has a positive last weight.
    lookup: Vec<usize>,
    /// `dest->last_weight`: the weight when added, then the latest non-zero weight, so a
    /// quiesced server keeps its slots.
    last_weight: HashMap<SocketAddr, u32>,
}

/// `ip_vs_mh_hashkey`: hsiphash of `offset + port + ntohl(addr_fold)` (u32, wrapping).
fn hashkey(addr: u32, port: u16, key: [u64; 2], offset: u32) -> u32 {
    hsiphash_1u32(offset.wrapping_add(u32::from(port)).wrapping_add(addr), key)
}

/// `fls`: 1-based index of the highest set bit, 0 for 0.
fn fls(x: u64) -> u32 {
    64 - x.leading_zeros()
}

impl Mh {
    pub(crate) fn new(flags: SchedulerFlags, table_size: u32) -> Self {
        Mh {
            flags,
            size: effective_mh_table_size(table_size),
            lookup: Vec::new(),
            last_weight: HashMap::new(),
        }
    }

    /// ip_vs_mh_permutate + ip_vs_mh_populate.
    fn populate(&mut self, dests: &[Dest], last: &[u32]) {
        self.lookup.clear();
        let gcd = gcd_positive(last.iter().map(|&w| u64::from(w)));
        if gcd == 0 {
            return;
        }
        // The kernel refuses more servers than slots (-EINVAL); we grow the table instead so
        // that every server fits.
        let size = if dests.len() as u64 > u64::from(self.size) {
            next_prime(dests.len() as u64)
        } else {
            u64::from(self.size)
        };
        // ip_vs_mh_shift_weight: keep max(weight)/gcd within IP_VS_MH_TAB_BITS bits, where the
        // kernel's table of 2^k-ish primes has TAB_BITS = k / 2.
        let tab_bits = fls(size) / 2;
        let max = last.iter().copied().max().map_or(0, u64::from);
        let rshift = fls(max / gcd).saturating_sub(tab_bits);

        struct Setup {
            perm: u64,
            skip: u64,
            turns: u64,
        }
        let mut setup: Vec<Setup> = dests
            .iter()
            .zip(last)
            .map(|(d, &lw)| {
                let (a, p) = (addr_fold(d.addr.ip()), d.addr.port());
                let offset = u64::from(hashkey(a, p, HASH1, 0)) % size;
                let skip = u64::from(hashkey(a, p, HASH2, 0)) % (size - 1) + 1;
                let turns = (u64::from(lw) / gcd) >> rshift;
                let turns = if turns == 0 {
                    u64::from(lw != 0)
                } else {
                    turns
                };
                Setup {
                    perm: offset,
                    skip,
                    turns,
                }
            })
            .collect();

        let size_us = size as usize;
        let mut lookup = vec![usize::MAX; size_us];
        let mut filled = 0usize;
        // Round after round over the list, each server takes `turns` slots, each at the next
        // free position of its permutation (offset, offset + skip, ... mod size).
        'fill: loop {
            for (i, ds) in setup.iter_mut().enumerate() {
                for _ in 0..ds.turns {
                    while lookup[ds.perm as usize] != usize::MAX {
                        ds.perm += ds.skip;
                        if ds.perm >= size {
                            ds.perm -= size;
                        }
                    }
                    lookup[ds.perm as usize] = i;
                    filled += 1;
                    if filled == size_us {
                        break 'fill;
                    }
                }
            }
        }
        self.lookup = lookup;
    }
}

impl Mh {
    /// Slot -> index into the dests of the last update.
    pub(crate) fn lookup_table(&self) -> &[usize] {
        &self.lookup
    }
}

impl Scheduler for Mh {
    fn update(&mut self, dests: &[Dest]) {
        let mut last_weight = HashMap::with_capacity(dests.len());
        let last: Vec<u32> = dests
            .iter()
            .map(|d| {
                let lw = match self.last_weight.get(&d.addr) {
                    Some(&old) if d.weight == 0 => old,
                    _ => d.weight,
                };
                last_weight.insert(d.addr, lw);
                lw
            })
            .collect();
        self.last_weight = last_weight;
        self.populate(dests, &last);
    }

    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize> {
        let size = self.lookup.len() as u32;
        if size == 0 {
            return None;
        }
        let addr = addr_fold(flow.client.ip());
        let port = if self.flags.port {
            flow.client.port()
        } else {
            0
        };
        let available = |i: usize| dests.get(i).is_some_and(|d| d.weight > 0);
        let ihash = hashkey(addr, port, HASH1, 0) % size;
        let first = self.lookup[ihash as usize];
        if available(first) {
            return Some(first);
        }
        if !self.flags.fallback {
            return None;
        }
        // ip_vs_mh_get_fallback: rehash with offsets ihash, ihash+1, ... (mod size).
        (0..size)
            .map(|offset| {
                let roffset = ((u64::from(offset) + u64::from(ihash)) % u64::from(size)) as u32;
                self.lookup[(hashkey(addr, port, HASH1, roffset) % size) as usize]
            })
            .find(|&i| available(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{d, flow, weighted};

    fn slots(s: &Mh, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in &s.lookup {
            c[i] += 1;
        }
        c
    }

    #[test]
    fn table_size_rounds_up_to_prime() {
        assert_eq!(effective_mh_table_size(4093), 4093);
        assert_eq!(effective_mh_table_size(4096), 4099);
        assert_eq!(effective_mh_table_size(0), 2);
        assert_eq!(effective_mh_table_size(u32::MAX), 1048583);
    }

    #[test]
    fn fills_every_slot_in_weight_proportion() {
        let mut s = Mh::new(SchedulerFlags::default(), 251);
        s.update(&weighted(&[1, 2, 1]));
        let c = slots(&s, 3);
        assert_eq!(c.iter().sum::<usize>(), 251);
        // turns 1,2,1 per round: 63/125/63 give or take the last round.
        assert!(
            (62..=64).contains(&c[0]) && (124..=126).contains(&c[1]),
            "{c:?}"
        );
    }

    #[test]
    fn huge_weights_are_shifted() {
        // max/gcd = 2^31 needs 32 bits; shifted to TAB_BITS = 6 for 4093 slots: turns 32 and 1.
        let mut s = Mh::new(SchedulerFlags::default(), 4093);
        s.update(&weighted(&[1 << 31, 1]));
        let c = slots(&s, 2);
        assert_eq!(c[0] + c[1], 4093);
        assert!(c[1] >= 4093 / 33 - 2 && c[1] <= 4093 / 33 + 2, "{c:?}");
    }

    #[test]
    fn added_at_weight_zero_gets_no_slot() {
        let mut s = Mh::new(SchedulerFlags::default(), 251);
        s.update(&weighted(&[1, 0]));
        assert_eq!(slots(&s, 2), [251, 0]);
        // Quiescing keeps the slots (last_weight), but nobody is available.
        let zero = weighted(&[0, 0]);
        s.update(&zero);
        assert_eq!(slots(&s, 2), [251, 0]);
        assert_eq!(s.schedule(&zero, &flow("192.0.2.1:1", "10.9.9.9:80")), None);
        let mut fresh = Mh::new(SchedulerFlags::default(), 251);
        fresh.update(&zero);
        assert!(fresh.lookup.is_empty());
    }

    #[test]
    fn quiesced_keeps_slots_and_fallback_moves_away() {
        // last_weight: a server set to 0 keeps its slots, so without fallback its keys fail.
        let mut plain = Mh::new(SchedulerFlags::default(), 251);
        let mut fb = Mh::new(
            SchedulerFlags {
                fallback: true,
                port: false,
            },
            251,
        );
        let up = weighted(&[1, 1]);
        plain.update(&up);
        fb.update(&up);
        let before = plain.lookup.clone();
        let down = vec![d(0, 0, 0, 0), up[1]];
        plain.update(&down);
        fb.update(&down);
        assert_eq!(plain.lookup, before);
        let mut saw_none = false;
        for k in 0..200u32 {
            let f = flow(&format!("10.1.{}.{}:1", k / 250, k % 250), "10.9.9.9:80");
            let p = plain.schedule(&down, &f);
            assert_ne!(p, Some(0));
            saw_none |= p.is_none();
            assert_eq!(fb.schedule(&down, &f), Some(1));
        }
        assert!(saw_none);
    }

    #[test]
    fn port_flag_changes_the_key() {
        let dests = weighted(&[1; 8]);
        let mut s = Mh::new(
            SchedulerFlags {
                port: true,
                fallback: false,
            },
            251,
        );
        s.update(&dests);
        let picks: std::collections::HashSet<_> = (1..200u16)
            .filter_map(|p| s.schedule(&dests, &flow(&format!("192.0.2.1:{p}"), "10.9.9.9:80")))
            .collect();
        assert!(picks.len() > 1);
        let mut s = Mh::new(SchedulerFlags::default(), 251);
        s.update(&dests);
        let picks: std::collections::HashSet<_> = (1..200u16)
            .filter_map(|p| s.schedule(&dests, &flow(&format!("192.0.2.1:{p}"), "10.9.9.9:80")))
            .collect();
        assert_eq!(picks.len(), 1);
    }

    #[test]
    fn kernel_offsets_for_a_server() {
        // Permutation start/skip of 10.0.0.1:80 in a 4093 table: hsiphash(0x0a000001 + 80).
        let a = 0x0a00_0001u32 + 80;
        assert_eq!(hashkey(0x0a00_0001, 80, HASH1, 0), hsiphash_1u32(a, HASH1));
        let mut s = Mh::new(SchedulerFlags::default(), 4093);
        s.update(&weighted(&[1]));
        assert!(s.lookup.iter().all(|&i| i == 0));
        let first = hsiphash_1u32(a, HASH1) as usize % 4093;
        // With two servers, the first one (populated first) owns its preferred slot.
        s.update(&weighted(&[1, 1]));
        assert_eq!(s.lookup[first], 0);
    }
}

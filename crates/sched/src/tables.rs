//! The schedulers' tables as data, for engines that cannot call a scheduler per connection
//! (the nftables engine renders them into maps the kernel looks up).

use crate::{Dest, Flow, Scheduler};

/// One full wrr cycle: the index picked for each of `sum(weights) / gcd` connections, in the
/// kernel's order. Empty when every weight is 0.
pub fn wrr_cycle(dests: &[Dest]) -> Vec<usize> {
    let gcd = dests
        .iter()
        .map(|d| u64::from(d.weight))
        .filter(|w| *w > 0)
        .fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let len = dests.iter().map(|d| u64::from(d.weight) / gcd).sum::<u64>();
    let mut wrr = crate::wrr::Wrr::default();
    wrr.update(dests);
    let flow = Flow {
        client: ([0, 0, 0, 0], 0).into(),
        vip: ([0, 0, 0, 0], 0).into(),
    };
    (0..len)
        .filter_map(|_| wrr.schedule(dests, &flow))
        .collect()
}

/// The source-hash table (256 buckets tiled by weight, `ip_vs_sh_reassign`).
pub fn sh_table(dests: &[Dest]) -> Vec<usize> {
    crate::sh::reassign(dests)
}

/// The Maglev lookup table of `size` (rounded up to a prime) slots, `ip_vs_mh_populate`.
pub fn maglev_table(dests: &[Dest], size: u32) -> Vec<usize> {
    let mut mh = crate::mh::Mh::new(crate::SchedulerFlags::default(), size);
    mh.update(dests);
    mh.lookup_table().to_vec()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(weights: &[u32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Dest {
                addr: ([10, 0, 0, i as u8 + 1], 80).into(),
                weight: *w,
                active: 0,
                inactive: 0,
            })
            .collect()
    }

    #[test]
    fn wrr_cycle_is_one_kernel_cycle() {
        let cycle = wrr_cycle(&dests(&[4, 2, 0, 2]));
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.iter().filter(|i| **i == 0).count(), 2);
        assert!(!cycle.contains(&2));
        assert!(wrr_cycle(&dests(&[0, 0])).is_empty());
    }

    #[test]
    fn maglev_and_sh_tables_cover_every_slot() {
        let d = dests(&[1, 1, 2]);
        let mh = maglev_table(&d, 251);
        assert_eq!(mh.len(), 251);
        assert!(mh.iter().all(|i| *i < 3));
        let sh = sh_table(&d);
        assert_eq!(sh.len(), 256);
        assert_eq!(sh[..4], [0, 1, 2, 2]);
    }
}

//! The schedulers' tables as data, for engines that cannot call a scheduler per connection
//! (the nftables engine renders them into maps the kernel looks up).

use crate::{Dest, Scheduler};

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

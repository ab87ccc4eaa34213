//! `ip_vs_sed.c`: shortest expected delay, `(active + 1) / weight`.

use crate::{load_gt, Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Sed;

/// `ip_vs_sed_dest_overhead`: only active connections, plus the one being scheduled.
pub(crate) fn sed_overhead(d: &Dest) -> u64 {
    u64::from(d.active) + 1
}

impl Scheduler for Sed {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let first = dests.iter().position(|d| d.weight > 0)?;
        let (mut least, mut loh) = (first, sed_overhead(&dests[first]));
        for (i, d) in dests.iter().enumerate().skip(first + 1) {
            let doh = sed_overhead(d);
            if load_gt(loh, dests[least].weight, doh, d.weight) {
                least = i;
                loh = doh;
            }
        }
        Some(least)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, d};

    #[test]
    fn expected_delay() {
        // (0+1)/1 = 1 vs (2+1)/4 = 0.75: the busier but stronger server wins.
        let dests = [d(0, 1, 0, 0), d(1, 4, 2, 0)];
        assert_eq!(Sed.schedule(&dests, &any_flow()), Some(1));
        // Inactive connections do not count.
        let dests = [d(0, 1, 0, 1000), d(1, 1, 1, 0)];
        assert_eq!(Sed.schedule(&dests, &any_flow()), Some(0));
        assert_eq!(Sed.schedule(&[d(0, 0, 0, 0)], &any_flow()), None);
    }
}

//! `ip_vs_nq.c`: never queue: an idle server if any, else shortest expected delay.

use crate::sed::sed_overhead;
use crate::{load_gt, Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Nq;

impl Scheduler for Nq {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let mut least: Option<(usize, u64)> = None;
        for (i, d) in dests.iter().enumerate() {
            if d.weight == 0 {
                continue;
            }
            // The first idle server is taken at once.
            if d.active == 0 {
                return Some(i);
            }
            let doh = sed_overhead(d);
            if least.is_none_or(|(l, loh)| load_gt(loh, dests[l].weight, doh, d.weight)) {
                least = Some((i, doh));
            }
        }
        least.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, d};

    #[test]
    fn idle_first_then_sed() {
        // An idle weak server beats a loaded strong one (sed would pick the strong one).
        let dests = [d(0, 100, 1, 0), d(1, 0, 0, 0), d(2, 1, 0, 50)];
        assert_eq!(Nq.schedule(&dests, &any_flow()), Some(2));
        // No idle server: (1+1)/1 = 2 vs (3+1)/4 = 1.
        let dests = [d(0, 1, 1, 0), d(1, 4, 3, 0)];
        assert_eq!(Nq.schedule(&dests, &any_flow()), Some(1));
        assert_eq!(Nq.schedule(&[d(0, 0, 0, 0)], &any_flow()), None);
    }
}

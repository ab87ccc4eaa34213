//! `ip_vs_wlc.c`: least `overhead / weight`, compared by cross multiplication.

use crate::{load_gt, Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Wlc;

/// The wlc choice, shared with lblc/lblcr (`__ip_vs_lblc_schedule` is the same loop).
pub(crate) fn pick(dests: &[Dest]) -> Option<usize> {
    let first = dests.iter().position(|d| d.weight > 0)?;
    let (mut least, mut loh) = (first, dests[first].overhead());
    for (i, d) in dests.iter().enumerate().skip(first + 1) {
        // Weight 0 never wins: loh * 0 > doh * lw is false.
        let doh = d.overhead();
        if load_gt(loh, dests[least].weight, doh, d.weight) {
            least = i;
            loh = doh;
        }
    }
    Some(least)
}

impl Scheduler for Wlc {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        pick(dests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, d};

    #[test]
    fn weighted_overhead() {
        // 512/2 = 256 < 300/1; ties keep the first.
        let dests = [d(0, 1, 0, 300), d(1, 2, 2, 0), d(2, 0, 0, 0)];
        assert_eq!(Wlc.schedule(&dests, &any_flow()), Some(1));
        let dests = [d(0, 1, 1, 0), d(1, 2, 2, 0)];
        assert_eq!(Wlc.schedule(&dests, &any_flow()), Some(0));
        assert_eq!(Wlc.schedule(&[d(0, 0, 0, 0)], &any_flow()), None);
    }

    #[test]
    fn inactive_counts() {
        // Unlike sed/nq, wlc's overhead includes inactive connections.
        let dests = [d(0, 1, 0, 5), d(1, 1, 0, 4)];
        assert_eq!(Wlc.schedule(&dests, &any_flow()), Some(1));
    }

    #[test]
    fn huge_counters() {
        let dests = [d(0, u32::MAX, u32::MAX, u32::MAX), d(1, 1, 0, 1)];
        assert_eq!(Wlc.schedule(&dests, &any_flow()), Some(1));
    }
}

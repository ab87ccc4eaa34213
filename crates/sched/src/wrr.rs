//! `ip_vs_wrr.c`: weighted round robin by gcd / max weight / current weight.

use crate::hash::gcd_positive;
use crate::{Dest, Flow, Scheduler};

#[derive(Debug, Default)]
pub(crate) struct Wrr {
    /// Last pick (`mark->cl`); `None` is the list head.
    cl: Option<usize>,
    /// Current weight; signed because it steps below zero before wrapping.
    cw: i64,
    /// Max weight less `di - 1`, so the last pass is for weight >= 1.
    mw: i64,
    /// gcd of the positive weights (1 when none).
    di: i64,
}

impl Scheduler for Wrr {
    fn update(&mut self, dests: &[Dest]) {
        // ip_vs_wrr_dest_changed (also what init_svc computes, as cw starts at 0).
        let g = gcd_positive(dests.iter().map(|d| u64::from(d.weight)));
        self.di = if g == 0 { 1 } else { g as i64 };
        let max = dests.iter().map(|d| i64::from(d.weight)).max().unwrap_or(0);
        self.cl = None;
        self.mw = max - (self.di - 1);
        if self.cw > self.mw || self.cw == 0 {
            self.cw = self.mw;
        } else if self.di > 1 {
            self.cw = (self.cw / self.di) * self.di + 1;
        }
    }

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        if self.mw <= 0 || dests.is_empty() {
            return None;
        }
        let last = self.cl;
        let mut stop: Option<usize> = None;
        let (mut last_pass, mut restarted) = (false, false);
        let mut pos = self.cl;
        // A pass from the head with cw <= max weight always hits, so a few passes suffice;
        // the bound only guards against a `dests` that breaks the update contract.
        for _ in 0..8 {
            let start = pos.map_or(0, |p| p + 1);
            for (i, d) in dests.iter().enumerate().skip(start) {
                if i64::from(d.weight) >= self.cw {
                    self.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    self.cl = Some(i);
                    return None;
                }
            }
            pos = None;
            self.cw -= self.di;
            if self.cw <= 0 {
                self.cw = self.mw;
                // Stop if the last pass (w >= 1) already covered every server.
                if last_pass || last.is_none() {
                    self.cl = None;
                    return None;
                }
                restarted = true;
            }
            last_pass = self.cw <= self.di;
            if last_pass && restarted && last.is_some() {
                // The w >= 1 pass began after `last`; finish it up to `last`.
                stop = last;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, weighted};

    fn picks(s: &mut Wrr, dests: &[Dest], n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| s.schedule(dests, &any_flow()).expect("pick"))
            .collect()
    }

    #[test]
    fn kernel_sequence() {
        // Weights 4,3,2: passes cw=4 -> [a], cw=3 -> [a,b], cw=2 -> [a,b,c], cw=1 -> [a,b,c].
        let dests = weighted(&[4, 3, 2]);
        let mut s = Wrr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 9), [0, 0, 1, 0, 1, 2, 0, 1, 2]);
        assert_eq!(picks(&mut s, &dests, 3), [0, 0, 1]);
    }

    #[test]
    fn gcd_steps() {
        // di=2, mw=6-1=5: cw 5 -> [a], 3 -> [a,b], 1 -> [a,b]: shares 3:2 = 6:4 reduced.
        let dests = weighted(&[6, 4, 0]);
        let mut s = Wrr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 5), [0, 0, 1, 0, 1]);
    }

    #[test]
    fn weight_change_keeps_cw_on_grid() {
        // dest_changed: cw stays if <= mw, snapped to (cw/di)*di + 1 when di > 1.
        let dests = weighted(&[4, 2]);
        let mut s = Wrr::default();
        s.update(&dests);
        picks(&mut s, &dests, 1); // cw = 3 (mw = 4 - 1)
        assert_eq!(s.cw, 3);
        let dests = weighted(&[4, 4]);
        s.update(&dests);
        assert_eq!((s.di, s.mw, s.cw, s.cl), (4, 1, 1, None));
        assert_eq!(picks(&mut s, &dests, 4), [0, 1, 0, 1]);
    }

    #[test]
    fn none_when_all_quiesced() {
        let dests = weighted(&[0, 0]);
        let mut s = Wrr::default();
        s.update(&dests);
        assert_eq!(s.schedule(&dests, &any_flow()), None);
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let dests = weighted(&[u32::MAX, u32::MAX - 1]);
        let mut s = Wrr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 3), [0, 0, 1]);
    }
}

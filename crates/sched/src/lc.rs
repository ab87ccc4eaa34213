//! `ip_vs_lc.c`: least connections by overhead (`active * 256 + inactive`).

use crate::{Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Lc;

impl Scheduler for Lc {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let mut least: Option<(usize, u64)> = None;
        for (i, d) in dests.iter().enumerate() {
            if d.weight == 0 {
                continue;
            }
            let doh = d.overhead();
            // Strictly less: ties keep the first.
            if least.is_none_or(|(_, loh)| doh < loh) {
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
    fn least_overhead_first_on_ties_skips_quiesced() {
        // active counts 256 times an inactive connection.
        let dests = [
            d(0, 1, 1, 0),
            d(1, 1, 0, 255),
            d(2, 0, 0, 0),
            d(3, 9, 0, 255),
        ];
        assert_eq!(Lc.schedule(&dests, &any_flow()), Some(1));
        let dests = [d(0, 0, 0, 0), d(1, 0, 0, 0)];
        assert_eq!(Lc.schedule(&dests, &any_flow()), None);
    }

    #[test]
    fn weight_only_gates() {
        // lc ignores weights apart from 0.
        let dests = [d(0, 100, 0, 2), d(1, 1, 0, 1)];
        assert_eq!(Lc.schedule(&dests, &any_flow()), Some(1));
    }
}

//! `ip_vs_fo.c`: weighted fail over: the highest weight, the first of equals.

use crate::{Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Fo;

impl Scheduler for Fo {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, d) in dests.iter().enumerate() {
            // `weight > hw` with hw starting at 0: weight 0 never, ties keep the first.
            if d.weight > best.map_or(0, |(_, hw)| hw) {
                best = Some((i, d.weight));
            }
        }
        best.map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, d};

    #[test]
    fn highest_weight_first_of_equals() {
        let dests = [d(0, 1, 0, 0), d(1, 5, 1000, 0), d(2, 5, 0, 0)];
        assert_eq!(Fo.schedule(&dests, &any_flow()), Some(1));
        assert_eq!(Fo.schedule(&[d(0, 0, 0, 0)], &any_flow()), None);
    }
}

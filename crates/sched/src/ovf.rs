//! `ip_vs_ovf.c`: overflow: the highest weight among servers whose active count does not
//! exceed their weight.

use crate::{Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Ovf;

impl Scheduler for Ovf {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let mut best: Option<(usize, u32)> = None;
        for (i, d) in dests.iter().enumerate() {
            // The kernel skips `activeconns > w`, so a server still takes one at active == w.
            if d.weight == 0 || d.active > d.weight {
                continue;
            }
            if best.is_none_or(|(_, hw)| d.weight > hw) {
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
    fn overflows_to_next_weight() {
        let dests = [d(0, 2, 0, 0), d(1, 5, 5, 0), d(2, 5, 0, 0)];
        // active == weight still qualifies: the first weight-5 server.
        assert_eq!(Ovf.schedule(&dests, &any_flow()), Some(1));
        let dests = [d(0, 2, 0, 0), d(1, 5, 6, 0), d(2, 5, 9, 0)];
        assert_eq!(Ovf.schedule(&dests, &any_flow()), Some(0));
        let dests = [d(0, 2, 3, 0), d(1, 0, 0, 0)];
        assert_eq!(Ovf.schedule(&dests, &any_flow()), None);
    }
}

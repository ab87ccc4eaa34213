//! `ip_vs_twos.c`: power of two choices: two weighted random picks, keep the less loaded.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{load_gt, Dest, Flow, Scheduler};

#[derive(Debug)]
pub(crate) struct Twos {
    rng: SmallRng,
}

impl Twos {
    pub(crate) fn new() -> Self {
        let rng = SmallRng::try_from_os_rng().unwrap_or_else(|_| {
            // No OS entropy: any seed will do for load spreading.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            SmallRng::seed_from_u64(t ^ u64::from(std::process::id()))
        });
        Twos { rng }
    }

    #[cfg(test)]
    pub(crate) fn seeded(seed: u64) -> Self {
        Twos {
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

/// The kernel's choice for the two random weights `r1`, `r2` in `0..=total_weight`: walk the
/// servers with weight > 0 subtracting weights; each pick is where its counter reaches <= 0.
/// The second wins only if strictly less loaded (`w2 * oh1 > w1 * oh2`).
pub(crate) fn pick(dests: &[Dest], r1: u64, r2: u64) -> Option<usize> {
    let (mut r1, mut r2) = (i128::from(r1), i128::from(r2));
    // Before the walk the kernel's choice1 is the last server with weight > 0.
    let mut choice1 = dests.iter().rposition(|d| d.weight > 0)?;
    let (mut c1, mut c2): (Option<usize>, Option<usize>) = (None, None);
    for (i, d) in dests.iter().enumerate() {
        if d.weight == 0 {
            continue;
        }
        r1 -= i128::from(d.weight);
        r2 -= i128::from(d.weight);
        if r1 <= 0 && c1.is_none() {
            c1 = Some(i);
        }
        if r2 <= 0 && c2.is_none() {
            c2 = Some(i);
        }
        if c1.is_some() && c2.is_some() {
            break;
        }
    }
    if let Some(c) = c1 {
        choice1 = c;
    }
    if let (Some(c1), Some(c2)) = (c1, c2) {
        let (a, b) = (&dests[c1], &dests[c2]);
        // weight2 * overhead1 > weight1 * overhead2, i.e. oh1/w1 > oh2/w2.
        if load_gt(a.overhead(), a.weight, b.overhead(), b.weight) {
            return Some(c2);
        }
    }
    Some(choice1)
}

impl Scheduler for Twos {
    fn update(&mut self, _dests: &[Dest]) {}

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            return None;
        }
        // "random weights are inclusive from 0 to total_weight" (prandom % (total + 1)).
        let r1 = self.rng.random_range(0..=total);
        let r2 = self.rng.random_range(0..=total);
        pick(dests, r1, r2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, d};

    #[test]
    fn weighted_walk_and_comparison() {
        let dests = [d(0, 2, 4, 0), d(1, 0, 0, 0), d(2, 3, 1, 0)];
        // r = 0..=2 land on server 0, 3..=5 on server 2 (weight 0 skipped).
        assert_eq!(pick(&dests, 0, 0), Some(0));
        assert_eq!(pick(&dests, 2, 2), Some(0));
        // 1024/2 > 256/3: the second choice wins.
        assert_eq!(pick(&dests, 2, 3), Some(2));
        assert_eq!(pick(&dests, 5, 0), Some(2));
        // Equal load keeps the first choice.
        let even = [d(0, 1, 1, 0), d(1, 2, 2, 0)];
        assert_eq!(pick(&even, 0, 3), Some(0));
        assert_eq!(pick(&even, 3, 0), Some(1));
        assert_eq!(pick(&[d(0, 0, 0, 0)], 0, 0), None);
    }

    #[test]
    fn random_schedule_stays_on_weighted_servers() {
        let dests = [d(0, 0, 0, 0), d(1, 1, 0, 0), d(2, u32::MAX, 0, 0)];
        let mut s = Twos::seeded(7);
        for _ in 0..1000 {
            let i = s.schedule(&dests, &any_flow()).expect("pick");
            assert!(i == 1 || i == 2);
        }
        assert_eq!(s.schedule(&[], &any_flow()), None);
    }
}

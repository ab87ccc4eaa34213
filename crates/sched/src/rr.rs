//! `ip_vs_rr.c`: round robin over the servers with weight > 0.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::{Dest, Flow, Scheduler};

#[derive(Debug, Default)]
pub(crate) struct Rr {
    /// The last pick (`svc->sched_data`); `None` is the list head.
    cursor: Option<usize>,
    addrs: Vec<SocketAddr>,
}

impl Scheduler for Rr {
    fn update(&mut self, dests: &[Dest]) {
        // ip_vs_rr_del_dest: when the current server goes, step back to its predecessor, so
        // the server that followed it comes next.
        let pos: HashMap<SocketAddr, usize> =
            dests.iter().enumerate().map(|(i, d)| (d.addr, i)).collect();
        self.cursor = self.cursor.and_then(|c| {
            let end = c.saturating_add(1).min(self.addrs.len());
            self.addrs[..end]
                .iter()
                .rev()
                .find_map(|a| pos.get(a).copied())
        });
        self.addrs = dests.iter().map(|d| d.addr).collect();
    }

    fn schedule(&mut self, dests: &[Dest], _flow: &Flow) -> Option<usize> {
        let n = dests.len();
        if n == 0 {
            return None;
        }
        // From after the last pick to the end, then from the head up to the last pick itself.
        let start = self.cursor.map_or(0, |c| (c + 1) % n);
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| dests[i].weight > 0)?;
        self.cursor = Some(i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{any_flow, weighted};

    fn picks(s: &mut Rr, dests: &[Dest], n: usize) -> Vec<Option<usize>> {
        (0..n).map(|_| s.schedule(dests, &any_flow())).collect()
    }

    #[test]
    fn cycles_and_skips_quiesced() {
        // ip_vs_rr_schedule: continue after the last pick, skip weight 0.
        let dests = weighted(&[1, 0, 5, 1]);
        let mut s = Rr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 5), [0, 2, 3, 0, 2].map(Some));
    }

    #[test]
    fn all_quiesced_is_none() {
        let dests = weighted(&[0, 0]);
        let mut s = Rr::default();
        s.update(&dests);
        assert_eq!(s.schedule(&dests, &any_flow()), None);
        s.update(&[]);
        assert_eq!(s.schedule(&[], &any_flow()), None);
    }

    #[test]
    fn deleting_the_current_server_resumes_with_its_successor() {
        // ip_vs_rr_del_dest moves sched_data to the deleted entry's predecessor.
        let dests = weighted(&[1, 1, 1, 1]);
        let mut s = Rr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 2), [Some(0), Some(1)]);
        let fewer = vec![dests[0], dests[2], dests[3]];
        s.update(&fewer);
        // Server 1 is gone; the next is server 2, now at index 1.
        assert_eq!(picks(&mut s, &fewer, 3), [Some(1), Some(2), Some(0)]);
    }

    #[test]
    fn kept_position_survives_unrelated_changes() {
        let dests = weighted(&[1, 1, 1]);
        let mut s = Rr::default();
        s.update(&dests);
        assert_eq!(picks(&mut s, &dests, 2), [Some(0), Some(1)]);
        let more = vec![dests[0], dests[1], dests[2], crate::testutil::d(9, 1, 0, 0)];
        s.update(&more);
        assert_eq!(picks(&mut s, &more, 3), [Some(2), Some(3), Some(0)]);
    }
}

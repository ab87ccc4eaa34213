//! `ip_vs_lblc.c`: locality-based least connections: each destination address (the VIP)
//! sticks to one server, chosen by wlc, until that server is gone, quiesced or overloaded.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::clock::Clock;
use crate::locality::{is_overloaded, Entry, Table, DEFAULT_EXPIRATION};
use crate::{wlc, Dest, Flow, Scheduler};

struct LblcEntry {
    addr: IpAddr,
    dest: SocketAddr,
    lastuse: Instant,
}

impl Entry for LblcEntry {
    fn addr(&self) -> IpAddr {
        self.addr
    }
    fn lastuse(&self) -> Instant {
        self.lastuse
    }
}

pub(crate) struct Lblc {
    clock: Arc<dyn Clock>,
    table: Table<LblcEntry>,
    /// Server address -> index in the current list.
    index: HashMap<SocketAddr, usize>,
}

impl Lblc {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        let table = Table::new(clock.now());
        Lblc {
            clock,
            table,
            index: HashMap::new(),
        }
    }
}

impl Scheduler for Lblc {
    fn update(&mut self, dests: &[Dest]) {
        // Entries keep their server by address: one removed and added back is valid again,
        // as a server back from the kernel's trash is.
        self.index = dests.iter().enumerate().map(|(i, d)| (d.addr, i)).collect();
    }

    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize> {
        let now = self.clock.now();
        self.table.run_timers(now, DEFAULT_EXPIRATION);
        let daddr = flow.vip.ip().to_canonical();
        let index = &self.index;
        let current = |addr: &SocketAddr| {
            index
                .get(addr)
                .copied()
                .filter(|&i| dests.get(i).is_some_and(|d| d.addr == *addr))
        };
        if let Some(en) = self.table.get_mut(daddr) {
            en.lastuse = now;
            if let Some(i) = current(&en.dest) {
                let d = &dests[i];
                if d.weight > 0 && !is_overloaded(d, dests) {
                    return Some(i);
                }
            }
        }
        // No entry, or its server is unavailable: pick by wlc and (re)point the entry.
        let i = wlc::pick(dests)?;
        let dest = dests[i].addr;
        match self.table.get_mut(daddr) {
            Some(en) if en.dest != dest => {
                en.dest = dest;
                en.lastuse = now;
            }
            Some(_) => {}
            None => self.table.insert(LblcEntry {
                addr: daddr,
                dest,
                lastuse: now,
            }),
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::testutil::{d, flow};
    use std::time::Duration;

    fn lblc() -> (Arc<ManualClock>, Lblc) {
        let clock = Arc::new(ManualClock::new());
        let s = Lblc::new(clock.clone());
        (clock, s)
    }

    #[test]
    fn sticks_per_destination_address() {
        let (_, mut s) = lblc();
        let mut dests = vec![d(0, 1, 5, 0), d(1, 1, 0, 0), d(2, 1, 0, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        // wlc picks server 1 (least overhead, first of equals).
        assert_eq!(s.schedule(&dests, &f), Some(1));
        // Server 1 now looks busier than 2, but the cache holds (not overloaded: 3 <= 4).
        dests[1].active = 3;
        dests[1].weight = 4;
        assert_eq!(s.schedule(&dests, &f), Some(1));
        // Another VIP is scheduled on its own: least loaded is now server 2.
        let g = flow("192.0.2.1:1000", "10.96.0.2:80");
        assert_eq!(s.schedule(&dests, &g), Some(2));
        assert_eq!(s.table.len(), 2);
    }

    #[test]
    fn overloaded_entry_is_rescheduled() {
        // active > weight and some server has active * 2 < weight.
        let (_, mut s) = lblc();
        let mut dests = vec![d(0, 2, 0, 0), d(1, 4, 0, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        dests[0].active = 3;
        dests[1].active = 2; // 2 * 2 < 4 is false: nobody is under half weight
        assert_eq!(s.schedule(&dests, &f), Some(0));
        dests[1].active = 1;
        assert_eq!(s.schedule(&dests, &f), Some(1));
        // The entry now points at server 1.
        dests[0].active = 0;
        assert_eq!(s.schedule(&dests, &f), Some(1));
    }

    #[test]
    fn quiesced_or_removed_entry_is_rescheduled_and_returns() {
        let (_, mut s) = lblc();
        let dests = vec![d(0, 1, 0, 0), d(1, 1, 1, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        let quiesced = vec![d(0, 0, 0, 0), d(1, 1, 1, 0)];
        s.update(&quiesced);
        assert_eq!(s.schedule(&quiesced, &f), Some(1));
        let only = vec![d(1, 1, 1, 0)];
        s.update(&only);
        assert_eq!(s.schedule(&only, &f), Some(0));
        s.update(&[]);
        assert_eq!(s.schedule(&[], &f), None);
    }

    #[test]
    fn entries_expire_after_a_day_unused() {
        let (clock, mut s) = lblc();
        let mut dests = vec![d(0, 1, 0, 0), d(1, 1, 0, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        dests[0].active = 1;
        // Used within the day: kept, so server 0 stays although busier.
        clock.advance(Duration::from_secs(23 * 3600));
        assert_eq!(s.schedule(&dests, &f), Some(0));
        // Unused for a day and a full check later: gone, so wlc picks afresh.
        clock.advance(DEFAULT_EXPIRATION + Duration::from_secs(30 * 60));
        assert_eq!(s.schedule(&dests, &f), Some(1));
    }
}

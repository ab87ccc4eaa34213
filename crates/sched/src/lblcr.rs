//! `ip_vs_lblcr.c`: locality-based least connections with replication: each destination
//! address (the VIP) has a server set; the least loaded member serves, the set grows by the
//! wlc choice when that member is overloaded and sheds its most loaded member once it has not
//! changed for `lblcr_expiration` (24 h).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::locality::{is_overloaded, Entry, Table, DEFAULT_EXPIRATION};
use crate::{load_gt, wlc, Dest, Flow, Scheduler};

struct LblcrEntry {
    addr: IpAddr,
    /// Newest first (`list_add_rcu` puts new members at the head).
    set: Vec<SocketAddr>,
    lastmod: Instant,
    lastuse: Instant,
}

impl Entry for LblcrEntry {
    fn addr(&self) -> IpAddr {
        self.addr
    }
    fn lastuse(&self) -> Instant {
        self.lastuse
    }
}

pub(crate) struct Lblcr {
    clock: Arc<dyn Clock>,
    table: Table<LblcrEntry>,
    index: HashMap<SocketAddr, usize>,
}

impl Lblcr {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        let table = Table::new(clock.now());
        Lblcr {
            clock,
            table,
            index: HashMap::new(),
        }
    }
}

/// Current index of a set member that is still in the list.
fn lookup(index: &HashMap<SocketAddr, usize>, dests: &[Dest], a: &SocketAddr) -> Option<usize> {
    index
        .get(a)
        .copied()
        .filter(|&i| dests.get(i).is_some_and(|d| d.addr == *a))
}

/// `ip_vs_dest_set_min`: the weighted least-loaded available member with weight > 0.
fn set_min(
    set: &[SocketAddr],
    index: &HashMap<SocketAddr, usize>,
    dests: &[Dest],
) -> Option<usize> {
    let mut members = set.iter().filter_map(|a| lookup(index, dests, a));
    let mut least = members.find(|&i| dests[i].weight > 0)?;
    for i in members {
        if load_gt(
            dests[least].overhead(),
            dests[least].weight,
            dests[i].overhead(),
            dests[i].weight,
        ) {
            least = i;
        }
    }
    Some(least)
}

/// `ip_vs_dest_set_max`: the weighted most-loaded member with weight > 0.
fn set_max(
    set: &[SocketAddr],
    index: &HashMap<SocketAddr, usize>,
    dests: &[Dest],
) -> Option<usize> {
    let mut members = set.iter().filter_map(|a| lookup(index, dests, a));
    let mut most = members.find(|&i| dests[i].weight > 0)?;
    for i in members {
        // moh/mw < doh/dw
        if dests[i].weight > 0
            && load_gt(
                dests[i].overhead(),
                dests[i].weight,
                dests[most].overhead(),
                dests[most].weight,
            )
        {
            most = i;
        }
    }
    Some(most)
}

/// `time_after(now, t + d)`.
fn after(now: Instant, t: Instant, d: Duration) -> bool {
    t.checked_add(d).is_some_and(|deadline| now > deadline)
}

impl Scheduler for Lblcr {
    fn update(&mut self, dests: &[Dest]) {
        self.index = dests.iter().enumerate().map(|(i, d)| (d.addr, i)).collect();
        // The kernel keeps removed servers in sets until shed; we cannot see their counters
        // any more, so they leave the sets now (without counting as a set change).
        let index = &self.index;
        self.table
            .for_each_mut(|en| en.set.retain(|a| index.contains_key(a)));
    }

    fn schedule(&mut self, dests: &[Dest], flow: &Flow) -> Option<usize> {
        let now = self.clock.now();
        self.table.run_timers(now, DEFAULT_EXPIRATION);
        let daddr = flow.vip.ip().to_canonical();
        let index = &self.index;
        if let Some(en) = self.table.get_mut(daddr) {
            en.lastuse = now;
            let dest = set_min(&en.set, index, dests);
            // More than one member and no change for a day: shed the most loaded.
            if en.set.len() > 1 && after(now, en.lastmod, DEFAULT_EXPIRATION) {
                if let Some(m) = set_max(&en.set, index, dests) {
                    let m = dests[m].addr;
                    en.set.retain(|a| *a != m);
                    en.lastmod = now;
                }
            }
            // The kernel still returns `dest` even if it was the member just shed.
            if let Some(i) = dest {
                if !is_overloaded(&dests[i], dests) {
                    return Some(i);
                }
            }
            let i = wlc::pick(dests)?;
            let a = dests[i].addr;
            if !en.set.contains(&a) {
                en.set.insert(0, a);
                en.lastmod = now;
            }
            return Some(i);
        }
        let i = wlc::pick(dests)?;
        self.table.insert(LblcrEntry {
            addr: daddr,
            set: vec![dests[i].addr],
            lastmod: now,
            lastuse: now,
        });
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::testutil::{d, flow};

    fn lblcr() -> (Arc<ManualClock>, Lblcr) {
        let clock = Arc::new(ManualClock::new());
        let s = Lblcr::new(clock.clone());
        (clock, s)
    }

    fn set_of(s: &mut Lblcr, vip: &str) -> Vec<SocketAddr> {
        s.table
            .get_mut(vip.parse().unwrap())
            .map(|e| e.set.clone())
            .unwrap_or_default()
    }

    #[test]
    fn set_grows_when_member_overloaded_and_serves_least_loaded() {
        let (_, mut s) = lblcr();
        let mut dests = vec![d(0, 2, 0, 0), d(1, 4, 0, 0), d(2, 4, 0, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        // Server 0 overloaded (3 > 2) while server 1 is under half weight: add wlc's choice.
        dests[0].active = 3;
        dests[2].active = 1;
        assert_eq!(s.schedule(&dests, &f), Some(1));
        assert_eq!(set_of(&mut s, "10.96.0.1"), [dests[1].addr, dests[0].addr]);
        // Within the set, the least loaded serves even if another server is idler.
        dests[0].active = 0;
        dests[1].active = 1;
        dests[2].active = 0;
        assert_eq!(s.schedule(&dests, &f), Some(0));
    }

    #[test]
    fn sheds_most_loaded_after_a_day_without_change() {
        let (clock, mut s) = lblcr();
        let mut dests = vec![d(0, 1, 0, 0), d(1, 4, 0, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        dests[0].active = 2;
        assert_eq!(s.schedule(&dests, &f), Some(1));
        assert_eq!(set_of(&mut s, "10.96.0.1").len(), 2);
        // Keep the entry in use, just short of lastmod + 24h: no shedding.
        for _ in 0..23 {
            clock.advance(Duration::from_secs(3600));
            s.schedule(&dests, &f);
        }
        assert_eq!(set_of(&mut s, "10.96.0.1").len(), 2);
        clock.advance(Duration::from_secs(3601));
        // set_min was computed first: server 1 (2/1 > 0/4) still serves this one.
        assert_eq!(s.schedule(&dests, &f), Some(1));
        assert_eq!(set_of(&mut s, "10.96.0.1"), [dests[1].addr]);
    }

    #[test]
    fn removed_and_quiesced_members() {
        let (_, mut s) = lblcr();
        let dests = vec![d(0, 1, 0, 0), d(1, 1, 1, 0)];
        s.update(&dests);
        let f = flow("192.0.2.1:1000", "10.96.0.1:80");
        assert_eq!(s.schedule(&dests, &f), Some(0));
        // Quiesced member: set_min finds nobody, wlc adds server 1.
        let q = vec![d(0, 0, 0, 0), d(1, 1, 1, 0)];
        s.update(&q);
        assert_eq!(s.schedule(&q, &f), Some(1));
        assert_eq!(set_of(&mut s, "10.96.0.1").len(), 2);
        let only = vec![d(1, 1, 1, 0)];
        s.update(&only);
        assert_eq!(set_of(&mut s, "10.96.0.1"), [only[0].addr]);
        assert_eq!(s.schedule(&only, &f), Some(0));
        let none = vec![d(1, 0, 0, 0)];
        s.update(&none);
        assert_eq!(s.schedule(&none, &f), None);
    }
}

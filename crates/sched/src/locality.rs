//! The cache table lblc and lblcr share: 1024 buckets keyed by the destination address, and
//! the kernel's periodic garbage collection, replayed lazily at the timer's nominal ticks.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::hash::{addr_fold, hash_32};
use crate::Dest;

const TAB_BITS: u32 = 10;
const TAB_SIZE: usize = 1 << TAB_BITS;
const TAB_MASK: usize = TAB_SIZE - 1;
/// `CHECK_EXPIRE_INTERVAL`: the GC timer period.
pub(crate) const CHECK_EXPIRE_INTERVAL: Duration = Duration::from_secs(60);
/// `ENTRY_TIMEOUT`: idle age after which an over-full table drops an entry.
pub(crate) const ENTRY_TIMEOUT: Duration = Duration::from_secs(6 * 60);
/// `DEFAULT_EXPIRATION` (sysctl `lblc_expiration` / `lblcr_expiration`): 24 hours.
pub(crate) const DEFAULT_EXPIRATION: Duration = Duration::from_secs(24 * 60 * 60);
/// `COUNT_FOR_FULL_EXPIRATION`: every 30th tick runs the full check.
const COUNT_FOR_FULL_EXPIRATION: u32 = 30;
/// `tbl->max_size`.
const MAX_SIZE: usize = TAB_SIZE * 16;

pub(crate) trait Entry {
    fn addr(&self) -> IpAddr;
    fn lastuse(&self) -> Instant;
}

#[derive(Debug)]
pub(crate) struct Table<E> {
    buckets: Vec<Vec<E>>,
    entries: usize,
    rover: usize,
    counter: u32,
    /// Time of the next GC tick; `None` once it is past what `Instant` can represent.
    next_tick: Option<Instant>,
}

/// `ip_vs_lblc(r)_hashkey`.
fn hashkey(addr: IpAddr) -> usize {
    hash_32(addr_fold(addr), TAB_BITS) as usize
}

/// `now` is at or past `t + d` (a far-future deadline never passes).
fn reached(now: Instant, t: Instant, d: Duration) -> bool {
    t.checked_add(d).is_some_and(|deadline| now >= deadline)
}

impl<E: Entry> Table<E> {
    pub(crate) fn new(now: Instant) -> Self {
        Table {
            buckets: (0..TAB_SIZE).map(|_| Vec::new()).collect(),
            entries: 0,
            rover: 0,
            counter: 1,
            next_tick: now.checked_add(CHECK_EXPIRE_INTERVAL),
        }
    }

    pub(crate) fn get_mut(&mut self, addr: IpAddr) -> Option<&mut E> {
        self.buckets[hashkey(addr)]
            .iter_mut()
            .find(|e| e.addr() == addr)
    }

    /// Adds an entry for an address not in the table.
    pub(crate) fn insert(&mut self, e: E) {
        self.buckets[hashkey(e.addr())].push(e);
        self.entries += 1;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(&mut E)) {
        self.buckets.iter_mut().flatten().for_each(&mut f);
    }

    /// Runs the GC ticks due by `now` at their nominal times, as the kernel timer would have.
    pub(crate) fn run_timers(&mut self, now: Instant, expiration: Duration) {
        while let Some(tick) = self.next_tick.filter(|&t| now >= t) {
            let due =
                ((now - tick).as_nanos() / CHECK_EXPIRE_INTERVAL.as_nanos()).saturating_add(1);
            // Ticks that only count (table within max_size, not a full-check tick), or any
            // ticks at all on an empty table, are skipped over arithmetically.
            let quiet: u128 = if self.entries == 0 {
                due
            } else if self.entries <= MAX_SIZE
                && !self.counter.is_multiple_of(COUNT_FOR_FULL_EXPIRATION)
            {
                due.min(u128::from(COUNT_FOR_FULL_EXPIRATION - self.counter))
            } else {
                0
            };
            if quiet > 0 {
                let c = u128::from(self.counter - 1) + quiet;
                self.counter = (c % u128::from(COUNT_FOR_FULL_EXPIRATION)) as u32 + 1;
                self.advance(quiet);
            } else {
                self.check_expire(tick, expiration);
                self.advance(1);
            }
        }
    }

    fn advance(&mut self, ticks: u128) {
        let step = u64::try_from(ticks)
            .ok()
            .and_then(|t| CHECK_EXPIRE_INTERVAL.as_secs().checked_mul(t))
            .map(Duration::from_secs);
        self.next_tick = self.next_tick.zip(step).and_then(|(t, s)| t.checked_add(s));
    }

    /// `ip_vs_lblc(r)_check_expire` at tick time `now`.
    fn check_expire(&mut self, now: Instant, expiration: Duration) {
        if self.counter.is_multiple_of(COUNT_FOR_FULL_EXPIRATION) {
            self.full_check(now, expiration);
            self.counter = 1;
            return;
        }
        if self.entries <= MAX_SIZE {
            self.counter += 1;
            return;
        }
        let mut goal = ((self.entries - MAX_SIZE) * 4 / 3).min(MAX_SIZE / 2) as i64;
        let mut j = self.rover;
        for _ in 0..TAB_SIZE {
            j = (j + 1) & TAB_MASK;
            let before = self.buckets[j].len();
            self.buckets[j].retain(|e| !reached(now, e.lastuse(), ENTRY_TIMEOUT));
            let removed = before - self.buckets[j].len();
            self.entries -= removed;
            goal -= removed as i64;
            if goal <= 0 {
                break;
            }
        }
        self.rover = j;
    }

    /// `ip_vs_lblc(r)_full_check`: drop entries unused for `expiration`.
    fn full_check(&mut self, now: Instant, expiration: Duration) {
        let mut j = self.rover;
        for _ in 0..TAB_SIZE {
            j = (j + 1) & TAB_MASK;
            let before = self.buckets[j].len();
            self.buckets[j].retain(|e| !reached(now, e.lastuse(), expiration));
            self.entries -= before - self.buckets[j].len();
        }
        self.rover = j;
    }
}

/// `is_overloaded` of lblc/lblcr: more active connections than weight while some server is
/// under half its weight.
pub(crate) fn is_overloaded(dest: &Dest, dests: &[Dest]) -> bool {
    dest.active > dest.weight
        && dests
            .iter()
            .any(|d| u64::from(d.active) * 2 < u64::from(d.weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(IpAddr, Instant);

    impl Entry for E {
        fn addr(&self) -> IpAddr {
            self.0
        }
        fn lastuse(&self) -> Instant {
            self.1
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    #[test]
    fn full_check_every_thirty_minutes_drops_day_old_entries() {
        let t0 = Instant::now();
        let mut t: Table<E> = Table::new(t0);
        t.insert(E(ip(1), t0));
        // The full check runs at ticks 30, 60, ...: t0 + 30 min, 60 min, ...
        let day = DEFAULT_EXPIRATION;
        t.run_timers(t0 + day - Duration::from_secs(1), day);
        assert_eq!(t.len(), 1, "the check at 23h30 keeps it");
        t.run_timers(t0 + day, day);
        assert_eq!(t.len(), 0, "tick 1440 is a full check");
        assert_eq!(t.counter, 1);
    }

    #[test]
    fn counter_replay_matches_tick_by_tick() {
        let t0 = Instant::now();
        let mut fast: Table<E> = Table::new(t0);
        let mut slow: Table<E> = Table::new(t0);
        fast.insert(E(ip(1), t0));
        slow.insert(E(ip(1), t0));
        for m in 1..=3000u64 {
            slow.run_timers(t0 + Duration::from_secs(60 * m), DEFAULT_EXPIRATION);
        }
        fast.run_timers(t0 + Duration::from_secs(60 * 3000 + 59), DEFAULT_EXPIRATION);
        assert_eq!((fast.counter, fast.len()), (slow.counter, slow.len()));
        assert_eq!(fast.next_tick, slow.next_tick);
    }

    #[test]
    fn over_full_table_drops_idle_entries() {
        let t0 = Instant::now();
        let mut t: Table<E> = Table::new(t0);
        let n = MAX_SIZE + 300;
        for i in 0..n as u32 {
            t.insert(E(ip(i), t0));
        }
        // Entries younger than ENTRY_TIMEOUT stay.
        t.run_timers(t0 + Duration::from_secs(5 * 60), DEFAULT_EXPIRATION);
        assert_eq!(t.len(), n);
        // Past it, whole buckets go until goal = 300 * 4 / 3 = 400 are gone.
        t.run_timers(t0 + Duration::from_secs(6 * 60), DEFAULT_EXPIRATION);
        assert!(t.len() <= n - 400 && t.len() > n - 450, "{}", t.len());
    }

    #[test]
    fn overload_rule() {
        let d = |w, a| Dest {
            addr: "10.0.0.1:80".parse().unwrap(),
            weight: w,
            active: a,
            inactive: 0,
        };
        let busy = d(2, 3);
        assert!(is_overloaded(&busy, &[busy, d(5, 2)]));
        // 3*2 < 5 is false: nobody is under half its weight.
        assert!(!is_overloaded(&busy, &[busy, d(5, 3)]));
        assert!(!is_overloaded(&d(3, 3), &[d(3, 3), d(5, 0)]));
    }
}

//! GCRA (generic cell rate algorithm) over a fixed-size table.
//!
//! A policy of `rate` requests per `period` with `burst` has an emission
//! interval `T = period / rate` and a tolerance `tau = T * (burst - 1)`. Each
//! key stores one number, its theoretical arrival time `tat`: a request at
//! `now` is admitted when `max(tat, now) - now <= tau`, and then moves `tat`
//! on by `T`. This is a token bucket (capacity `burst`, refill `rate` per
//! `period`) in 16 bytes per key with no timer, and other workers'
//! admissions are merged by moving `tat` on by `T` per request.
//!
//! The table has a fixed number of slots (set at start), probed at four
//! places per key. A key's slot is reused only once its `tat` has passed
//! (its state then equals a fresh key's), so eviction never forgets a
//! limited client. When all four slots hold live keys, the new key shares
//! the least used of them: the two clients then count against one budget
//! (more strictly, never less). That is what a flood of more distinct keys
//! than slots degrades to; it costs no memory, and the shared slot is the
//! one with the most room left, so new clients are refused only when every
//! candidate slot is itself at its limit.
//!
//! Times are nanoseconds from any fixed origin (the caller's clock), so the
//! algorithm is tested with an injected clock.

/// One policy's parameters in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub emission: u64,
    pub tau: u64,
}

impl Gcra {
    /// `rate` requests per `period_ns`, up to `burst` at once.
    pub fn new(rate: u64, period_ns: u64, burst: u64) -> Gcra {
        let emission = (period_ns / rate.max(1)).max(1);
        Gcra {
            emission,
            tau: emission.saturating_mul(burst.max(1) - 1),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Key hash with the low bit set (0 marks an empty slot).
    key: u64,
    tat: u64,
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still admissible right now after this one.
    pub remaining: u64,
    /// Nanoseconds until the next request would be admitted (0 when one is).
    pub retry_after: u64,
    /// Nanoseconds until the key is back to a full burst.
    pub reset: u64,
    /// The key's new state, for [`Table::commit`].
    tat: u64,
    slot: usize,
}

const PROBES: usize = 4;

pub struct Table {
    slots: Box<[Slot]>,
    mask: usize,
}

impl Table {
    /// A table of at least `capacity` slots (rounded up to a power of two).
    pub fn new(capacity: usize) -> Table {
        let n = capacity.max(PROBES).next_power_of_two();
        Table {
            slots: vec![Slot::default(); n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn find(&mut self, key: u64, now: u64) -> usize {
        let key = key | 1;
        let base = (key >> 1) as usize;
        let idx = |i: usize| (base.wrapping_add(i)) & self.mask;
        if let Some(i) = (0..PROBES).map(idx).find(|&i| self.slots[i].key == key) {
            return i;
        }
        // A free slot, or one whose key is fully replenished.
        if let Some(i) = (0..PROBES)
            .map(idx)
            .find(|&i| self.slots[i].key == 0 || self.slots[i].tat <= now)
        {
            self.slots[i] = Slot { key, tat: now };
            return i;
        }
        // All live: share the one with the most room left.
        (0..PROBES)
            .map(idx)
            .min_by_key(|&i| self.slots[i].tat)
            .unwrap_or(base & self.mask)
    }

    /// Whether a request for `key` at `now` is admitted, without recording
    /// it; [`Table::commit`] records an admitted one.
    pub fn check(&mut self, key: u64, now: u64, p: Gcra) -> Decision {
        let slot = self.find(key, now);
        let tat = self.slots[slot].tat.max(now);
        let ahead = tat - now;
        if ahead > p.tau {
            return Decision {
                allowed: false,
                remaining: 0,
                retry_after: ahead - p.tau,
                reset: ahead,
                tat,
                slot,
            };
        }
        let next = tat + p.emission;
        let used = next - now;
        Decision {
            allowed: true,
            remaining: (p.tau + p.emission).saturating_sub(used) / p.emission,
            retry_after: 0,
            reset: used,
            tat: next,
            slot,
        }
    }

    /// Records an admitted request.
    pub fn commit(&mut self, d: &Decision) {
        if d.allowed {
            self.slots[d.slot].tat = d.tat;
        }
    }

    /// Charges `count` requests admitted elsewhere (another worker) to `key`.
    pub fn charge(&mut self, key: u64, now: u64, count: u64, emission: u64) {
        let slot = self.find(key, now);
        let s = &mut self.slots[slot];
        s.tat = s
            .tat
            .max(now)
            .saturating_add(emission.saturating_mul(count));
    }

    /// Moves `key`'s state to at least `tat` (the gateway-wide state learnt
    /// from the cluster store; the later time never counts a request twice).
    pub fn raise(&mut self, key: u64, now: u64, tat: u64) {
        let slot = self.find(key, now);
        let s = &mut self.slots[slot];
        s.tat = s.tat.max(tat);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn admit(t: &mut Table, key: u64, now: u64, p: Gcra) -> bool {
        let d = t.check(key, now, p);
        t.commit(&d);
        d.allowed
    }

    #[test]
    fn burst_then_steady_rate() {
        // 10 per second, burst 5
        let p = Gcra::new(10, S, 5);
        let mut t = Table::new(64);
        let admitted = (0..20).filter(|_| admit(&mut t, 7, 0, p)).count();
        assert_eq!(admitted, 5, "the burst, all at once");
        let d = t.check(7, 0, p);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, S / 10, "one emission interval");
        // one more every 100 ms
        assert!(!admit(&mut t, 7, S / 10 - 1, p));
        assert!(admit(&mut t, 7, S / 10, p));
        assert!(!admit(&mut t, 7, S / 10, p));
        // over a long quiet time, back to a full burst, not more
        let later = 100 * S;
        assert_eq!((0..20).filter(|_| admit(&mut t, 7, later, p)).count(), 5);
    }

    #[test]
    fn remaining_and_reset() {
        let p = Gcra::new(10, S, 3);
        let mut t = Table::new(64);
        let d = t.check(1, 0, p);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        t.commit(&d);
        let d = t.check(1, 0, p);
        assert_eq!(d.remaining, 1);
        assert_eq!(d.reset, 2 * S / 10);
    }

    #[test]
    fn keys_are_independent_and_rejections_cost_nothing() {
        let p = Gcra::new(1, S, 1);
        let mut t = Table::new(64);
        assert!(admit(&mut t, 1, 0, p));
        for _ in 0..100 {
            assert!(!admit(&mut t, 1, 0, p));
        }
        assert!(admit(&mut t, 2, 0, p));
        assert!(
            admit(&mut t, 1, S, p),
            "rejected requests did not push the key back"
        );
    }

    #[test]
    fn remote_admissions_count_against_the_key() {
        let p = Gcra::new(10, S, 10);
        let mut t = Table::new(64);
        t.charge(9, 0, 8, p.emission);
        assert_eq!((0..20).filter(|_| admit(&mut t, 9, 0, p)).count(), 2);
    }

    #[test]
    fn raising_to_a_shared_state_takes_the_later_time() {
        let p = Gcra::new(10, S, 10);
        let mut t = Table::new(64);
        for _ in 0..4 {
            admit(&mut t, 5, 0, p);
        }
        // The store says 6 requests' worth lie ahead, own 4 included.
        t.raise(5, 0, 6 * p.emission);
        assert_eq!((0..20).filter(|_| admit(&mut t, 5, 0, p)).count(), 4);
        // An older state changes nothing.
        t.raise(5, 0, p.emission);
        assert!(!admit(&mut t, 5, 0, p));
    }

    #[test]
    fn a_full_table_never_frees_a_limited_key() {
        let p = Gcra::new(1, 3600 * S, 1);
        let mut t = Table::new(4);
        assert!(admit(&mut t, 42, 0, p));
        // a flood of other keys, all admitted once and so all live
        for k in 1000..101_000u64 {
            admit(&mut t, k * 2, 0, p);
        }
        assert!(!admit(&mut t, 42, 0, p), "still limited after the flood");
        assert_eq!(t.capacity(), 4);
    }

    #[test]
    fn a_new_key_in_a_full_table_shares_the_least_used_slot() {
        let p = Gcra::new(10, S, 10);
        let mut t = Table::new(4);
        // Four keys fill the four slots, key k having used k + 1 requests
        // (keys with the low bit set share nothing else: slots by key >> 1).
        let keys = [1u64, 3, 5, 7];
        for (used, &k) in keys.iter().enumerate() {
            for _ in 0..=used {
                assert!(admit(&mut t, k, 0, p));
            }
        }
        // A fifth key finds every slot live and joins key 1 (1 used).
        let d = t.check(9, 0, p);
        assert_eq!((d.allowed, d.remaining), (true, 8));
        t.commit(&d);
        // Key 1 now counts the newcomer's request too: never looser.
        assert_eq!(t.check(1, 0, p).remaining, 7);
        assert_eq!(t.check(7, 0, p).remaining, 5, "others untouched");
    }
}

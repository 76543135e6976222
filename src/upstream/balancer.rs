//! Load balancers. Each worker owns its balancer state (plain `Cell`s, no
//! atomics): round-robin order and least-request counts are per core, which is
//! what makes them free of cross-core cache traffic. Over many workers the
//! distributions still converge to the configured weights.
//!
//! # Adding a balancer
//! Add a `BalancerKind` variant in config/raw.rs, a [`Balancer`] variant here
//! with its state, a branch in [`Balancer::pick`], a unit test on its
//! distribution, and a line in docs/configuration.md.

use std::cell::Cell;

use crate::config::{BalancerKind, EndpointConfig};

/// Virtual nodes per unit of weight on the consistent-hash ring.
const VNODES_PER_WEIGHT: u32 = 64;

#[derive(Debug)]
pub enum Balancer {
    RoundRobin {
        next: Cell<usize>,
    },
    /// Smooth weighted round-robin (nginx's algorithm): even interleaving.
    Weighted {
        current: Box<[Cell<i64>]>,
        weights: Box<[i64]>,
    },
    /// Power of two random choices on per-worker in-flight counts.
    LeastRequest {
        rng: Cell<u64>,
    },
    /// Ring hash over `(hash, endpoint)` points, sorted by hash.
    ConsistentHash {
        ring: Box<[(u64, u32)]>,
    },
}

impl Balancer {
    pub fn new(kind: BalancerKind, endpoints: &[EndpointConfig], seed: u64) -> Self {
        match kind {
            BalancerKind::RoundRobin => Balancer::RoundRobin {
                next: Cell::new(seed as usize % endpoints.len().max(1)),
            },
            BalancerKind::WeightedRoundRobin => {
                let weights: Box<[i64]> = endpoints.iter().map(|e| i64::from(e.weight)).collect();
                Balancer::Weighted {
                    current: endpoints.iter().map(|_| Cell::new(0)).collect(),
                    weights,
                }
            }
            BalancerKind::LeastRequest => Balancer::LeastRequest {
                rng: Cell::new(seed | 1),
            },
            BalancerKind::ConsistentHash => {
                let mut ring = Vec::new();
                for (i, e) in endpoints.iter().enumerate() {
                    let id = e.address.to_string();
                    for v in 0..e.weight * VNODES_PER_WEIGHT {
                        let mut key = id.clone().into_bytes();
                        key.extend_from_slice(&v.to_le_bytes());
                        ring.push((hash(&key), i as u32));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash { ring: ring.into() }
            }
        }
    }

    /// Picks an endpoint among those `usable` says yes to; `None` when none is.
    /// `in_flight` gives per-worker outstanding requests (least-request);
    /// `key_hash` is the consistent-hash input (see [`hash`]).
    pub fn pick(
        &self,
        n: usize,
        usable: impl Fn(usize) -> bool,
        in_flight: impl Fn(usize) -> u32,
        key_hash: u64,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Balancer::RoundRobin { next } => {
                let start = next.get();
                let found = (0..n).map(|k| (start + k) % n).find(|&i| usable(i))?;
                next.set((found + 1) % n);
                Some(found)
            }
            Balancer::Weighted { current, weights } => {
                let mut best: Option<usize> = None;
                let mut total_usable = 0;
                for i in (0..n).filter(|&i| usable(i)) {
                    current[i].set(current[i].get() + weights[i]);
                    total_usable += weights[i];
                    if best.is_none_or(|b| current[i].get() > current[b].get()) {
                        best = Some(i);
                    }
                }
                let b = best?;
                current[b].set(current[b].get() - total_usable);
                Some(b)
            }
            Balancer::LeastRequest { rng } => {
                let usable_count = (0..n).filter(|&i| usable(i)).count();
                let nth = |k: usize| (0..n).filter(|&i| usable(i)).nth(k);
                match usable_count {
                    0 => None,
                    1 => nth(0),
                    c => {
                        let a = (next_random(rng) % c as u64) as usize;
                        let mut b = (next_random(rng) % (c as u64 - 1)) as usize;
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (nth(a)?, nth(b)?);
                        Some(if in_flight(b) < in_flight(a) { b } else { a })
                    }
                }
            }
            Balancer::ConsistentHash { ring } => {
                let start = ring.partition_point(|&(p, _)| p < key_hash);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| usable(i))
            }
        }
    }
}

/// xorshift64*: per-worker, deterministic from its seed, good enough for P2C.
fn next_random(state: &Cell<u64>) -> u64 {
    let mut x = state.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.set(x);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// FNV-1a with a final avalanche (splitmix64 finaliser): stable across
/// processes and versions, so every worker and every gateway instance maps a
/// key to the same endpoint.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(weights: &[u32]) -> Vec<EndpointConfig> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| EndpointConfig {
                address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: w,
                server_name: None,
            })
            .collect()
    }

    fn counts(
        b: &Balancer,
        n: usize,
        rounds: usize,
        usable: impl Fn(usize) -> bool + Copy,
    ) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..rounds {
            c[b.pick(n, usable, |_| 0, 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_even_and_skips_unusable() {
        let b = Balancer::new(BalancerKind::RoundRobin, &eps(&[1, 1, 1]), 0);
        assert_eq!(counts(&b, 3, 300, |_| true), vec![100, 100, 100]);
        assert_eq!(counts(&b, 3, 300, |i| i != 1), vec![150, 0, 150]);
        assert_eq!(b.pick(3, |_| false, |_| 0, 0), None);
    }

    #[test]
    fn weighted_follows_weights_smoothly() {
        let b = Balancer::new(BalancerKind::WeightedRoundRobin, &eps(&[5, 1, 1]), 0);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(3, |_| true, |_| 0, 0).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&b, 3, 700, |_| true), vec![500, 100, 100]);
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let b = Balancer::new(BalancerKind::LeastRequest, &eps(&[1, 1]), 42);
        for _ in 0..100 {
            assert_eq!(
                b.pick(2, |_| true, |i| if i == 0 { 10 } else { 0 }, 0),
                Some(1)
            );
        }
        // With equal load, both are chosen.
        let c = counts(&b, 4, 4000, |_| true);
        assert!(c.iter().all(|&x| x > 700), "{c:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let b = Balancer::new(BalancerKind::ConsistentHash, &eps(&[1, 1, 1]), 0);
        let mut c = [0usize; 3];
        for k in 0..3000u32 {
            let key = format!("user-{k}");
            let first = b.pick(3, |_| true, |_| 0, hash(key.as_bytes())).unwrap();
            assert_eq!(
                b.pick(3, |_| true, |_| 0, hash(key.as_bytes())),
                Some(first)
            );
            c[first] += 1;
        }
        assert!(c.iter().all(|&x| x > 700), "{c:?}");
        // Removing one endpoint moves only its keys.
        for k in 0..1000u32 {
            let key = format!("user-{k}");
            let before = b.pick(3, |_| true, |_| 0, hash(key.as_bytes())).unwrap();
            let after = b.pick(3, |i| i != 2, |_| 0, hash(key.as_bytes())).unwrap();
            if before != 2 {
                assert_eq!(before, after);
            }
        }
    }
}

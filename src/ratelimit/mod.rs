//! Rate limiting: named GCRA policies, keyed by client address, route or a
//! header, applied per route; exact across the workers of one process up to
//! a stated bound.
//!
//! - `gcra.rs`: the algorithm and the fixed-size per-worker table.
//! - `throttle.rs`: per-route concurrency caps with a bounded FIFO queue.
//! - `cluster.rs`: cluster mode, sharing the tables' state across gateway
//!   instances through Redis from a background thread.
//! - this file: policies as configured ([`Policy`]), the request key, the
//!   per-worker [`Limiter`] and the cross-core reconciliation.
//!
//! # Across cores
//! Each worker owns its table: a check touches only that worker's memory.
//! Every `sync_interval` a worker sends the requests it admitted since the
//! last tick (key hash and emission interval, aggregated) to every other
//! worker as a per-core message; receivers charge them to their own tables.
//! So every worker converges on the gateway-wide count, whichever core a
//! client's connections land on. What one worker cannot see is what the
//! others admitted during the last interval, hence the bound, for a policy
//! of `rate` per `period` with `burst` on `N` workers and interval `I`:
//!
//! ```text
//! admitted in any window <= configured + (N - 1) * (burst + rate * I / period)
//! ```
//!
//! With the defaults (`I` = 20 ms) and a policy of 100/s burst 100 on 2
//! workers, that is at most 102 extra requests at the very start of a burst
//! hitting both cores at once, and about 2 per interval in steady state.

pub mod cluster;
pub mod gcra;
pub mod throttle;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gcra::{Decision, Gcra, Table};

use crate::http::head::RequestView;
use crate::upstream::balancer::hash;

/// What a policy's key is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    ClientIp,
    Route,
    /// A request header's value (lowercase name); absent counts as empty.
    Header(Box<[u8]>),
    /// The authenticated caller: the token's subject or the API key's
    /// consumer; empty on routes without auth.
    Principal,
}

/// A configured policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Box<str>,
    pub rate: u64,
    pub period: Duration,
    pub burst: u64,
    pub key: Box<[KeyPart]>,
    pub gcra: Gcra,
    /// `"name";q=rate;w=seconds`, rendered once.
    pub policy_field: Box<[u8]>,
    /// Hash of the name: part of every key, stable across reloads.
    id: u64,
}

impl Policy {
    pub fn new(name: &str, rate: u64, period: Duration, burst: u64, key: Vec<KeyPart>) -> Policy {
        let period_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        Policy {
            name: name.into(),
            rate,
            period,
            burst,
            key: key.into(),
            gcra: Gcra::new(rate, period_ns, burst),
            policy_field: format!("\"{name}\";q={rate};w={}", period.as_secs().max(1))
                .into_bytes()
                .into(),
            id: hash(name.as_bytes()),
        }
    }

    /// The request's key under this policy.
    pub fn key_of(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        route: &str,
        principal: Option<&str>,
    ) -> u64 {
        let mut h = self.id;
        let mix = |h: u64, bytes: &[u8]| {
            hash(bytes) ^ h.rotate_left(23).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        for part in self.key.iter() {
            h = match part {
                KeyPart::ClientIp => match client {
                    IpAddr::V4(v4) => mix(h, &v4.octets()),
                    IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => mix(h, &v4.octets()),
                        None => mix(h, &v6.octets()),
                    },
                },
                KeyPart::Route => mix(h, route.as_bytes()),
                KeyPart::Header(name) => mix(h, req.header(name).unwrap_or_default()),
                KeyPart::Principal => mix(h, principal.unwrap_or_default().as_bytes()),
            };
        }
        h
    }
}

/// `[rate_limit]` as configured.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub policies: Vec<Arc<Policy>>,
    pub sync_interval: Duration,
    pub table_size: usize,
    /// Send `RateLimit` fields on admitted responses too.
    pub headers: bool,
    /// Cluster mode: shared with other instances through Redis.
    pub redis: Option<cluster::StoreConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            policies: Vec::new(),
            sync_interval: Duration::from_millis(20),
            table_size: 65_536,
            headers: true,
            redis: None,
        }
    }
}

/// Admitted requests to tell the other workers about: (key, emission, count).
pub type Deltas = Arc<Vec<(u64, u64, u64)>>;

/// One worker's limiter.
pub struct Limiter {
    table: RefCell<Table>,
    /// Admissions since the last sync, when there are other workers.
    pending: RefCell<HashMap<u64, (u64, u64)>>,
    share: bool,
    /// Requests charged from other workers' reports.
    pub received: std::cell::Cell<u64>,
    /// Set while the cluster store is down and `failure = "closed"`.
    refusing: std::cell::Cell<bool>,
}

/// The outcome for a request under all of its route's policies, naming
/// policies by their index in the route's list (no shared reference count
/// is touched on the request path).
pub enum Verdict {
    /// Admitted; the policy closest to its limit, for the response fields.
    Allowed(Option<(usize, Decision)>),
    /// Refused by this policy.
    Limited(usize, Decision),
}

/// Most policies one route may apply.
pub const MAX_POLICIES: usize = 8;

impl Limiter {
    /// `share`: whether admissions are reported to anyone (other workers or
    /// the cluster store).
    pub fn new(table_size: usize, share: bool) -> Limiter {
        Limiter {
            table: RefCell::new(Table::new(table_size)),
            pending: RefCell::new(HashMap::new()),
            share,
            received: std::cell::Cell::new(0),
            refusing: std::cell::Cell::new(false),
        }
    }

    /// Whether rate-limited routes must answer 503 (cluster store down,
    /// failing closed).
    pub fn refusing(&self) -> bool {
        self.refusing.get()
    }

    pub fn set_refusing(&self, refuse: bool) {
        self.refusing.set(refuse);
    }

    /// Checks a request against `policies` (keys from `key_of`) at `now`
    /// (nanoseconds); records it under every policy only when all admit it.
    pub fn check(
        &self,
        policies: &[Arc<Policy>],
        key_of: impl Fn(&Policy) -> u64,
        now: u64,
    ) -> Verdict {
        let mut table = self.table.borrow_mut();
        let mut tightest: Option<(usize, Decision)> = None;
        let mut decided: [Option<(Decision, u64)>; MAX_POLICIES] = [None; MAX_POLICIES];
        for (i, p) in policies.iter().enumerate().take(MAX_POLICIES) {
            let key = key_of(p);
            let d = table.check(key, now, p.gcra);
            if !d.allowed {
                return Verdict::Limited(i, d);
            }
            decided[i] = Some((d, key));
            if tightest.is_none_or(|(_, t)| d.remaining < t.remaining) {
                tightest = Some((i, d));
            }
        }
        let mut pending = self.pending.borrow_mut();
        for (i, entry) in decided.iter().enumerate() {
            let Some((d, key)) = entry else { continue };
            table.commit(d);
            if self.share {
                let e = pending
                    .entry(*key)
                    .or_insert((policies[i].gcra.emission, 0));
                e.1 += 1;
            }
        }
        Verdict::Allowed(tightest)
    }

    /// What this worker admitted since the last call, for the others.
    pub fn take_deltas(&self) -> Option<Deltas> {
        let mut pending = self.pending.borrow_mut();
        if pending.is_empty() {
            return None;
        }
        let list = pending.drain().map(|(k, (e, n))| (k, e, n)).collect();
        Some(Arc::new(list))
    }

    /// Moves keys on to what other instances admitted: `(key, ns ahead)`.
    pub fn raise(&self, ahead: &[(u64, u64)], now: u64) {
        let mut table = self.table.borrow_mut();
        for &(key, ns) in ahead {
            table.raise(key, now, now.saturating_add(ns));
        }
    }

    /// Charges what other workers admitted.
    pub fn apply(&self, deltas: &Deltas, now: u64) {
        let mut table = self.table.borrow_mut();
        for &(key, emission, count) in deltas.iter() {
            table.charge(key, now, count, emission);
            self.received.set(self.received.get() + count);
        }
    }
}

/// Renders `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-
/// headers) and, when refused, `Retry-After`.
pub fn render_fields(out: &mut Vec<u8>, p: &Policy, d: &Decision) {
    use crate::http::response::push_u64;
    let secs = |ns: u64| ns.div_ceil(1_000_000_000);
    out.extend_from_slice(b"ratelimit-policy: ");
    out.extend_from_slice(&p.policy_field);
    out.extend_from_slice(b"\r\nratelimit: \"");
    out.extend_from_slice(p.name.as_bytes());
    out.extend_from_slice(b"\";r=");
    push_u64(out, d.remaining);
    out.extend_from_slice(b";t=");
    push_u64(out, secs(if d.allowed { d.reset } else { d.retry_after }));
    out.extend_from_slice(b"\r\n");
    if !d.allowed {
        out.extend_from_slice(b"retry-after: ");
        push_u64(out, secs(d.retry_after).max(1));
        out.extend_from_slice(b"\r\n");
    }
}

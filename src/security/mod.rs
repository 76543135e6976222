//! Edge security: what every service behind the gateway gets without
//! writing it.
//!
//! - `path.rs`: path normalisation before routing (dot segments, one
//!   decoding pass, refused encodings).
//! - `ipset.rs`: CIDR sets as sorted ranges (100,000-entry lists).
//! - `client_ip.rs`: the real client address behind trusted proxies.
//! - `cors.rs`: CORS preflight answers and response fields.
//! - `proxy_protocol.rs`: PROXY v1/v2 headers from L4 load balancers.
//! - `openapi.rs`: request rules compiled from an OpenAPI 3 operation.
//! - `validate.rs`: per-route request rules (methods, headers, media types,
//!   limits, query parameters).
//! - this file: [`IpFilter`], [`HeaderPolicy`] and the per-route bundle
//!   [`RoutePolicy`], all compiled at config load and immutable after.
//!
//! Pipeline order (http/conn.rs): normalise path -> client address -> global
//! IP filter -> route -> path anomalies -> route IP filter -> CORS preflight
//! -> validation -> body limit -> forward -> response header policy.

pub mod client_ip;
pub mod cors;
pub mod ipset;
pub mod openapi;
pub mod path;
pub mod proxy_protocol;
pub mod validate;

use std::net::IpAddr;

use ipset::IpSet;

use crate::http::response::push_field;
use path::Anomalies;

/// Allow and deny lists. Deny wins; with an allow list, everything not on
/// it is refused.
#[derive(Debug, Clone, Default)]
pub struct IpFilter {
    pub allow: Option<IpSet>,
    pub deny: IpSet,
}

impl IpFilter {
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// A header field: lowercase name, value.
pub type Field = (Box<[u8]>, Box<[u8]>);

/// Which name lengths a list of field names has: bit n for n bytes, bit 63
/// for 63 and more. A field whose length is not in the mask is in no list,
/// which most fields of a message learn with one test instead of a string
/// comparison per list entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LengthMask(u64);

impl LengthMask {
    pub const fn of(names: &[&[u8]]) -> Self {
        let mut mask = LengthMask(0);
        let mut i = 0;
        while i < names.len() {
            mask.0 |= Self::bit(names[i]);
            i += 1;
        }
        mask
    }

    const fn bit(name: &[u8]) -> u64 {
        let n = if name.len() < 63 { name.len() } else { 63 };
        1 << n
    }

    pub fn add(&mut self, name: &[u8]) {
        self.0 |= Self::bit(name);
    }

    pub const fn may_hold(self, name: &[u8]) -> bool {
        self.0 & Self::bit(name) != 0
    }
}

/// How upstream response fields are rewritten for one route. Names are
/// lowercase.
#[derive(Debug, Clone, Default)]
pub struct HeaderPolicy {
    /// Removed from upstream responses.
    pub remove: Box<[Box<[u8]>]>,
    /// Replace any upstream value.
    pub set: Box<[Field]>,
    /// Added when the upstream sent none (the default security set).
    pub if_absent: Box<[Field]>,
    /// The lengths of the names in `remove` and `set` (see `LengthMask`).
    dropped_lengths: LengthMask,
}

impl HeaderPolicy {
    pub fn new(remove: Box<[Box<[u8]>]>, set: Box<[Field]>, if_absent: Box<[Field]>) -> Self {
        let mut dropped_lengths = LengthMask::default();
        for n in remove.iter().chain(set.iter().map(|(n, _)| n)) {
            dropped_lengths.add(n);
        }
        HeaderPolicy {
            remove,
            set,
            if_absent,
            dropped_lengths,
        }
    }

    /// Whether an upstream field is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.dropped_lengths.may_hold(name)
            && (self.remove.iter().any(|n| name.eq_ignore_ascii_case(n))
                || self.set.iter().any(|(n, _)| name.eq_ignore_ascii_case(n)))
    }

    /// Renders `set` and the `if_absent` fields `present` does not report
    /// into `out` as header lines.
    pub fn render(&self, out: &mut Vec<u8>, present: impl Fn(&[u8]) -> bool) {
        for (n, v) in self.set.iter() {
            push_field(out, n, v);
        }
        for (n, v) in self.if_absent.iter() {
            if !present(n) {
                push_field(out, n, v);
            }
        }
    }
}

/// Everything a route adds to the global protections.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub ip_filter: IpFilter,
    pub headers: HeaderPolicy,
    pub cors: Option<cors::Cors>,
    pub validate: Option<validate::Validate>,
    /// Path anomalies this route accepts.
    pub allow_path: Anomalies,
}

/// The global part, in `Config`.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub trusted_proxies: IpSet,
    pub ip_filter: IpFilter,
    /// Header lines added to responses the gateway makes itself (errors,
    /// direct responses): the global `set` and default security fields.
    pub gateway_headers: Box<[u8]>,
    /// List files the config read, watched for changes.
    pub watched_files: Vec<std::path::PathBuf>,
    pub watch_interval: std::time::Duration,
}

#[cfg(test)]
mod length_mask_tests {
    use super::*;

    #[test]
    fn drops_only_listed_names_whatever_their_length() {
        let long = vec![b'x'; 80].into_boxed_slice();
        let policy = HeaderPolicy::new(
            vec![b"server".to_vec().into_boxed_slice(), long.clone()].into(),
            vec![(b"x-frame-options".to_vec().into(), b"DENY".to_vec().into())].into(),
            Box::default(),
        );
        assert!(policy.drops(b"Server"));
        assert!(policy.drops(b"X-Frame-Options"));
        assert!(policy.drops(&long));
        assert!(!policy.drops(&[b'x'; 70]));
        assert!(!policy.drops(b"server-timing"));
        assert!(!policy.drops(b"vary"));
        assert!(!HeaderPolicy::default().drops(b"server"));
    }
}

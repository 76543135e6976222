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
    remove: Box<[Box<[u8]>]>,
    /// Replace any upstream value.
    set: Box<[Field]>,
    /// Added when the upstream sent none (the default security set).
    if_absent: Box<[Field]>,
    /// The lengths of the names in `remove` and `set` (see `LengthMask`).
    dropped_lengths: LengthMask,
    /// The lengths of the names in `if_absent`.
    absent_lengths: LengthMask,
    /// `set` and `if_absent` rendered as header lines at config load, so
    /// the common response (the upstream sent none of the `if_absent`
    /// fields) takes two copies instead of a field-by-field render.
    set_lines: Box<[u8]>,
    if_absent_lines: Box<[u8]>,
}

impl HeaderPolicy {
    pub fn new(remove: Box<[Box<[u8]>]>, set: Box<[Field]>, if_absent: Box<[Field]>) -> Self {
        let mut dropped_lengths = LengthMask::default();
        for n in remove.iter().chain(set.iter().map(|(n, _)| n)) {
            dropped_lengths.add(n);
        }
        let mut absent_lengths = LengthMask::default();
        for (n, _) in if_absent.iter() {
            absent_lengths.add(n);
        }
        let lines = |fields: &[Field]| {
            let mut out = Vec::new();
            for (n, v) in fields {
                push_field(&mut out, n, v);
            }
            out.into_boxed_slice()
        };
        HeaderPolicy {
            set_lines: lines(&set),
            if_absent_lines: lines(&if_absent),
            remove,
            set,
            if_absent,
            dropped_lengths,
            absent_lengths,
        }
    }

    /// Whether an upstream field is dropped (removed, or replaced by `set`).
    pub fn drops(&self, name: &[u8]) -> bool {
        self.dropped_lengths.may_hold(name)
            && (self.remove.iter().any(|n| name.eq_ignore_ascii_case(n))
                || self.set.iter().any(|(n, _)| name.eq_ignore_ascii_case(n)))
    }

    /// Renders `set` and the `if_absent` fields not among `upstream` (the
    /// names of the fields the upstream sent) into `out` as header lines.
    pub fn render<'a, I>(&self, out: &mut Vec<u8>, upstream: I)
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        out.extend_from_slice(&self.set_lines);
        let sent = |name: &[u8]| upstream.clone().any(|u| u.eq_ignore_ascii_case(name));
        let shadows = |u: &[u8]| {
            self.absent_lengths.may_hold(u)
                && self
                    .if_absent
                    .iter()
                    .any(|(n, _)| u.eq_ignore_ascii_case(n))
        };
        if !upstream.clone().any(shadows) {
            out.extend_from_slice(&self.if_absent_lines);
            return;
        }
        for (n, v) in self.if_absent.iter() {
            if !sent(n) {
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

    #[test]
    fn renders_set_fields_and_the_defaults_the_upstream_did_not_send() {
        let field = |n: &str, v: &str| -> Field { (n.as_bytes().into(), v.as_bytes().into()) };
        let policy = HeaderPolicy::new(
            Box::default(),
            vec![field("cache-control", "no-store")].into(),
            vec![
                field("x-frame-options", "DENY"),
                field("referrer-policy", "no-referrer"),
            ]
            .into(),
        );
        let render = |upstream: &[&str]| {
            let mut out = Vec::new();
            policy.render(&mut out, upstream.iter().map(|n| n.as_bytes()));
            String::from_utf8(out).unwrap()
        };
        let all = "cache-control: no-store\r\nx-frame-options: DENY\r\n\
                   referrer-policy: no-referrer\r\n";
        assert_eq!(render(&[]), all);
        // Same lengths as a default field, other names.
        assert_eq!(render(&["content-type", "x-frame-option5"]), all);
        assert_eq!(
            render(&["Server", "X-Frame-Options"]),
            "cache-control: no-store\r\nreferrer-policy: no-referrer\r\n"
        );
        assert_eq!(
            render(&["referrer-POLICY", "x-frame-options"]),
            "cache-control: no-store\r\n"
        );
    }
}

//! The real client address.
//!
//! The client is the TCP peer, unless the peer is a trusted proxy: then
//! `X-Forwarded-For` is walked from the right (the entry the trusted peer
//! appended) to the left, skipping trusted addresses; the first untrusted
//! address is the client. Entries further left were written by whoever sent
//! the request and prove nothing, which is why the leftmost entry is never
//! taken on trust. Several `X-Forwarded-For` fields form one list, in order
//! (RFC 9110 5.3).
//!
//! An entry that is not an IP address stops the walk: the client is then
//! the last address that could be read (a trusted proxy), never a value the
//! client made up.

use std::net::IpAddr;

use super::ipset::IpSet;

/// The client address for a request from `peer` whose `X-Forwarded-For`
/// fields are `xff` (in header order).
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &IpSet,
) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for field in xff.rev() {
        for entry in field.rsplit(|&b| b == b',') {
            match parse_forwarded_ip(entry) {
                Some(ip) => {
                    client = ip;
                    if !trusted.contains(ip) {
                        return ip;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_forwarded_ip(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::ipset::parse_entry;

    fn trusted(list: &[&str]) -> IpSet {
        IpSet::new(list.iter().map(|e| parse_entry(e).unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn walk(peer: &str, xff: &[&str], t: &IpSet) -> IpAddr {
        client_ip(ip(peer), xff.iter().map(|s| s.as_bytes()), t)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(walk("203.0.113.9", &["1.1.1.1"], &t), ip("203.0.113.9"));
        assert_eq!(
            walk("203.0.113.9", &["1.1.1.1"], &IpSet::default()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        // spoofed leftmost entry, real client, then two of our proxies
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, 198.51.100.7, 10.0.0.2"], &t),
            ip("198.51.100.7")
        );
        // several fields are one list
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6", "198.51.100.7", "10.0.0.3"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk("10.0.0.1", &["[2001:db8::7]:443"], &t),
            ip("2001:db8::7")
        );
        assert_eq!(walk("10.0.0.1", &["192.0.2.1:8080"], &t), ip("192.0.2.1"));
    }

    #[test]
    fn all_trusted_or_garbage_never_yields_a_made_up_address() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            walk("10.0.0.1", &["10.0.0.9, 10.0.0.8"], &t),
            ip("10.0.0.9")
        );
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, garbage, 10.0.0.8"], &t),
            ip("10.0.0.8")
        );
        assert_eq!(walk("10.0.0.1", &[], &t), ip("10.0.0.1"));
        assert_eq!(walk("10.0.0.1", &["unknown"], &t), ip("10.0.0.1"));
    }
}

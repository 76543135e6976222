//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by L4 load
//! balancers (HAProxy, AWS NLB, ...) ahead of the HTTP bytes, carrying the
//! original client address. Only read on listeners configured for it: on
//! any other listener the header would be a client-chosen address.
//!
//! `LOCAL` (v2) and `UNKNOWN` (v1) headers, used for the balancer's own
//! health checks, keep the TCP peer as the address. Anything malformed
//! closes the connection without a response, since what follows is not
//! known to be HTTP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes with its CRLF.
const V1_MAX: usize = 107;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete header of `len` bytes; `source` is the client address,
    /// or `None` to keep the TCP peer (LOCAL / UNKNOWN).
    Complete {
        len: usize,
        source: Option<SocketAddr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid;

/// Reads a PROXY header at the start of a connection into `buf`, by
/// `until`. Returns the header's length (the bytes after it stay in
/// `buf`) and the client address it names, or `None` when the connection
/// must close: malformed, closed, or too slow.
pub async fn read_header<S: crate::http::io::Stream>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    until: monoio::time::Instant,
) -> Option<(usize, Option<SocketAddr>)> {
    loop {
        match parse(buf) {
            Ok(Parsed::Complete { len, source }) => return Some((len, source)),
            Ok(Parsed::Partial) => {}
            Err(Invalid) => return None,
        }
        let wait = until.saturating_duration_since(monoio::time::Instant::now());
        match monoio::time::timeout(wait, crate::http::io::read_into(stream, buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Parses a PROXY header at the start of `buf`.
///
/// # Errors
/// [`Invalid`] when `buf` does not start with a valid v1 or v2 header.
pub fn parse(buf: &[u8]) -> Result<Parsed, Invalid> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Invalid> {
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(Invalid);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Invalid)
        } else {
            Ok(Parsed::Partial)
        };
    };
    if end + 2 > V1_MAX {
        return Err(Invalid);
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Invalid)?;
    let len = end + 2;
    let mut f = line.split(' ');
    let proto = f.next().ok_or(Invalid)?;
    if proto == "UNKNOWN" {
        return Ok(Parsed::Complete { len, source: None });
    }
    let (src, dst, sport, dport) = (f.next(), f.next(), f.next(), f.next());
    if f.next().is_some() {
        return Err(Invalid);
    }
    let (Some(src), Some(_), Some(sport), Some(dport)) = (src, dst, sport, dport) else {
        return Err(Invalid);
    };
    dport.parse::<u16>().map_err(|_| Invalid)?;
    let ip: IpAddr = match proto {
        "TCP4" => IpAddr::V4(src.parse::<Ipv4Addr>().map_err(|_| Invalid)?),
        "TCP6" => IpAddr::V6(src.parse::<Ipv6Addr>().map_err(|_| Invalid)?),
        _ => return Err(Invalid),
    };
    // Ports are decimal without leading zeros (the spec forbids them).
    if sport.len() > 1 && sport.starts_with('0') {
        return Err(Invalid);
    }
    let port: u16 = sport.parse().map_err(|_| Invalid)?;
    Ok(Parsed::Complete {
        len,
        source: Some(SocketAddr::new(ip, port)),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Invalid> {
    let n = buf.len().min(12);
    if buf[..n] != V2_SIG[..n] {
        return Err(Invalid);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Partial);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let addr_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + addr_len;
    if ver_cmd >> 4 != 2 {
        return Err(Invalid);
    }
    if buf.len() < len {
        return Ok(Parsed::Partial);
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer speaking for itself.
        0 => return Ok(Parsed::Complete { len, source: None }),
        1 => {}
        _ => return Err(Invalid),
    }
    let source = match fam {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC: keep the peer.
        0x00 => None,
        _ => return Err(Invalid),
    };
    Ok(Parsed::Complete { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v1_lines() {
        let h = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Complete {
                len: 44,
                source: Some("198.51.100.7:51234".parse().unwrap())
            })
        );
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n";
        assert_eq!(
            parse(h).unwrap(),
            Parsed::Complete {
                len: h.len(),
                source: Some("[2001:db8::7]:1".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Complete {
                len: 15,
                source: None
            })
        );
        assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(Parsed::Partial));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Partial));
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(parse(bad), Err(Invalid), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&[b'P'; 200][..]), Err(Invalid));
    }

    /// Mutations of valid headers from a fixed seed: parsing never panics,
    /// a complete header lies within the buffer, and every prefix of it
    /// parses as partial (a header split across reads is never refused).
    #[test]
    fn mutated_headers_parse_the_same_however_they_arrive() {
        let mut four = vec![198, 51, 100, 7, 10, 0, 0, 1];
        four.extend_from_slice(&[0xc8, 0x22, 0x01, 0xbb]);
        let seeds = [
            b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\nGET".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(1, 0x11, &four),
            v2(0, 0x00, &[]),
        ];
        let alphabet = b"\r\n PROXYTCP46:.019\x00\x11\x21\x20\xff";
        let mut m = crate::mutate::Mutator::new(0x5851_f42d_4c95_7f2d);
        for _ in 0..20_000 {
            let mut raw = seeds[m.below(seeds.len())].clone();
            let edits = m.below(3);
            m.mutate(&mut raw, alphabet, edits, false);
            if let Ok(Parsed::Complete { len, .. }) = parse(&raw) {
                assert!(len <= raw.len());
                for k in 0..len {
                    assert_eq!(
                        parse(&raw[..k]),
                        Ok(Parsed::Partial),
                        "{:?} cut at {k}",
                        String::from_utf8_lossy(&raw)
                    );
                }
            }
        }
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![198, 51, 100, 7, 10, 0, 0, 1];
        body.extend_from_slice(&51234u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x11, &body);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Complete {
                len: 28,
                source: Some("198.51.100.7:51234".parse().unwrap())
            })
        );
        assert_eq!(parse(&h[..20]), Ok(Parsed::Partial));
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Ok(Parsed::Complete {
                len: 16,
                source: None
            })
        );
        let mut six = vec![0u8; 36];
        six[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        six[32..34].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &six)).unwrap(),
            Parsed::Complete {
                len: 52,
                source: Some("[2001:db8::7]:9".parse().unwrap())
            }
        );
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(Invalid));
        assert_eq!(parse(&v2(3, 0x11, &body)), Err(Invalid));
        let mut wrong = h.clone();
        wrong[3] = b'x';
        assert_eq!(parse(&wrong), Err(Invalid));
    }
}

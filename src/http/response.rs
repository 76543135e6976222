//! Responses the gateway writes itself: errors (small JSON bodies carrying the
//! request id), direct-response routes, and the request id itself.
//!
//! Everything is rendered into the connection's reusable write buffer with
//! `itoa`-style formatting; no per-response `String` or `format!`.

use std::cell::Cell;

use crate::error::GatewayError;
use crate::routing::DirectResponse;

/// Longest request id accepted from a client (see `head::valid_request_id`).
pub const MAX_REQUEST_ID: usize = 128;

/// A request id, on the stack.
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

impl RequestId {
    pub fn from_client(id: &[u8]) -> Self {
        let mut bytes = [0u8; MAX_REQUEST_ID];
        let len = id.len().min(MAX_REQUEST_ID);
        bytes[..len].copy_from_slice(&id[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Per-worker request id source: 16 hex digits that differ per worker and per
/// process start, then a 16-hex-digit counter. Unique without coordination.
pub struct RequestIds {
    /// The prefix's digits, written once.
    prefix: [u8; 16],
    next: Cell<u64>,
}

impl RequestIds {
    pub fn new(worker: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = format!("{nanos}:{}:{worker}", std::process::id());
        let mut prefix = [0u8; 16];
        hex16(
            &mut prefix,
            crate::upstream::balancer::hash(seed.as_bytes()),
        );
        Self {
            prefix,
            next: Cell::new(0),
        }
    }

    pub fn generate(&self) -> RequestId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..16].copy_from_slice(&self.prefix);
        hex16(&mut bytes[16..32], n);
        RequestId { bytes, len: 32 }
    }
}

/// Writes `v` as 16 lowercase hex digits into `out[..16]`.
pub fn hex16(out: &mut [u8], v: u64) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Appends one `name: value` header line.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends an address: IPv4 (and IPv4-mapped IPv6) as dotted digits written
/// directly, since `fmt` is slow per octet and this runs per request; other
/// IPv6 through `Display` for its zero compression.
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    use std::net::IpAddr;
    let v4 = match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    match (v4, ip) {
        (Some(v4), _) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        (None, v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a decimal number.
pub fn push_u64(out: &mut Vec<u8>, v: u64) {
    if v < 1000 {
        // Statuses, address octets, short lengths: most numbers a request
        // writes, with no digit loop and no copy call.
        let v = v as u16;
        if v >= 100 {
            out.push(b'0' + (v / 100) as u8);
        }
        if v >= 10 {
            out.push(b'0' + (v / 10 % 10) as u8);
        }
        out.push(b'0' + (v % 10) as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Reason phrase for the statuses the gateway produces or relays.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes the status line (`HTTP/1.1 404 Not Found\r\n`).
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Connection handling named on a gateway-made response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnHeader {
    /// Nothing (HTTP/1.1 keep-alive is the default).
    None,
    Close,
    /// HTTP/1.0 client that asked for keep-alive.
    KeepAlive,
}

fn connection(out: &mut Vec<u8>, conn: ConnHeader) {
    match conn {
        ConnHeader::None => {}
        ConnHeader::Close => out.extend_from_slice(b"connection: close\r\n"),
        ConnHeader::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
    }
}

/// Renders a complete error response:
/// `{"error":"...","status":N,"request_id":"..."}`. `extra` holds complete
/// header lines (security fields, `Allow`, CORS).
pub fn render_error(
    out: &mut Vec<u8>,
    err: GatewayError,
    id: &RequestId,
    conn: ConnHeader,
    extra: &[&[u8]],
) {
    render_error_detail(out, err, id, conn, extra, b"");
}

/// [`render_error`] with `detail`: extra `,"key":value` JSON fields (already
/// escaped) appended to the body.
pub fn render_error_detail(
    out: &mut Vec<u8>,
    err: GatewayError,
    id: &RequestId,
    conn: ConnHeader,
    extra: &[&[u8]],
    detail: &[u8],
) {
    let status = err.status();
    let msg = err.public_message().as_bytes();
    let id = id.as_bytes();
    // The body's fixed parts plus the values; all ASCII needing no escape.
    let body_len = br#"{"error":"","status":,"request_id":""}"#.len()
        + msg.len()
        + 3
        + id.len()
        + detail.len();
    out.clear();
    status_line(out, status);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    push_u64(out, body_len as u64);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(id);
    out.extend_from_slice(b"\r\n");
    extra.iter().for_each(|e| out.extend_from_slice(e));
    connection(out, conn);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(br#"{"error":""#);
    out.extend_from_slice(msg);
    out.extend_from_slice(br#"","status":"#);
    push_u64(out, u64::from(status));
    out.extend_from_slice(br#","request_id":""#);
    out.extend_from_slice(id);
    out.push(b'"');
    out.extend_from_slice(detail);
    out.push(b'}');
}

/// Renders a response without a body (a CORS preflight answer).
pub fn render_empty(
    out: &mut Vec<u8>,
    status: u16,
    id: &RequestId,
    conn: ConnHeader,
    extra: &[&[u8]],
) {
    out.clear();
    status_line(out, status);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\n");
    extra.iter().for_each(|e| out.extend_from_slice(e));
    connection(out, conn);
    out.extend_from_slice(b"\r\n");
}

/// Renders a direct-response route's response. `head_only` for HEAD requests.
pub fn render_direct(
    out: &mut Vec<u8>,
    d: &DirectResponse,
    id: &RequestId,
    conn: ConnHeader,
    head_only: bool,
    extra: &[&[u8]],
) {
    out.clear();
    status_line(out, d.status);
    for (name, value) in d.headers.iter() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if d.status != 204 && d.status != 304 {
        out.extend_from_slice(b"content-length: ");
        push_u64(out, d.body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\n");
    // Gateway-wide fields, unless the route's response sets the same field.
    for line in extra
        .iter()
        .flat_map(|e| e.split_inclusive(|&b| b == b'\n'))
    {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !d
            .headers
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        {
            out.extend_from_slice(line);
        }
    }
    connection(out, conn);
    out.extend_from_slice(b"\r\n");
    if !head_only && d.status != 204 && d.status != 304 {
        out.extend_from_slice(&d.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_json_with_exact_length() {
        let ids = RequestIds::new(3);
        let id = ids.generate();
        let mut out = Vec::new();
        render_error(
            &mut out,
            GatewayError::NotFound,
            &id,
            ConnHeader::Close,
            &[],
        );
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(head.contains("connection: close"));
        let id = String::from_utf8(id.as_bytes().to_vec()).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"error":"no route matches this request","status":404,"request_id":"{id}"}}"#
            )
        );
    }

    #[test]
    fn direct_responses_keep_their_own_fields() {
        let d = DirectResponse {
            status: 200,
            headers: vec![("X-Frame-Options".into(), "SAMEORIGIN".into())].into(),
            body: b"ok".to_vec().into(),
        };
        let mut out = Vec::new();
        let extra: &[u8] = b"x-frame-options: DENY\r\nx-content-type-options: nosniff\r\n";
        let id = RequestIds::new(0).generate();
        render_direct(&mut out, &d, &id, ConnHeader::None, false, &[extra]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Frame-Options: SAMEORIGIN\r\n"));
        assert!(!text.contains("DENY"));
        assert!(text.contains("x-content-type-options: nosniff\r\n"));
    }

    #[test]
    fn ids_are_unique_and_hex() {
        let ids = RequestIds::new(0);
        let a = ids.generate();
        let b = ids.generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn addresses() {
        let mut out = Vec::new();
        for ip in ["2001:db8::1", "10.200.3.4", "::ffff:192.0.2.9"] {
            push_ip(&mut out, ip.parse().unwrap());
            out.push(b' ');
        }
        assert_eq!(out, b"2001:db8::1 10.200.3.4 192.0.2.9 ");
    }

    #[test]
    fn numbers() {
        for v in (0..=12_000).chain([u64::from(u32::MAX), u64::MAX - 1, u64::MAX]) {
            let mut out = b"x".to_vec();
            push_u64(&mut out, v);
            assert_eq!(out, format!("x{v}").as_bytes());
        }
    }
}

//! Access and audit log lines: one JSON object per line, formatted straight
//! into a worker's batch buffer (no `String`, no `format!`, no serde on the
//! request path).
//!
//! What a line never contains: request headers (so no `Authorization`,
//! cookies or API keys), bodies, and, by default, query values (`?key=***`).
//! Request bytes that are not printable ASCII are escaped as `\u00XX`.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::response::{push_ip, push_u64};

/// What happens to the query string in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryMode {
    /// Keep parameter names, replace values with `***`.
    Redact,
    /// Log the query as received.
    Keep,
    /// Leave the query out.
    Drop,
}

/// One finished request, as the access log sees it.
pub struct AccessRecord<'a> {
    pub request_id: &'a [u8],
    pub client: IpAddr,
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub query: &'a [u8],
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream: Option<Duration>,
    pub trace_id: Option<&'a [u8]>,
    pub worker: usize,
}

/// Formats one access-log line (without the newline) into `out`.
pub fn write_access(out: &mut Vec<u8>, clock: &Clock, r: &AccessRecord<'_>, query: QueryMode) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write_now(out);
    out.extend_from_slice(b"\",\"type\":\"access\",\"request_id\":\"");
    escape_bytes(out, r.request_id);
    out.extend_from_slice(b"\",\"client_ip\":\"");
    push_ip(out, r.client);
    out.extend_from_slice(b"\",\"method\":\"");
    escape_bytes(out, r.method);
    out.extend_from_slice(b"\",\"path\":\"");
    escape_bytes(out, r.path);
    match query {
        _ if r.query.len() <= 1 => {}
        QueryMode::Drop => {}
        QueryMode::Keep => escape_bytes(out, r.query),
        QueryMode::Redact => redact_query(out, r.query),
    }
    out.extend_from_slice(b"\",\"route\":");
    opt_str(out, r.route);
    out.extend_from_slice(b",\"cluster\":");
    opt_str(out, r.cluster);
    out.extend_from_slice(b",\"endpoint\":");
    match r.endpoint {
        Some(e) => {
            out.push(b'"');
            if e.is_ipv6() {
                out.push(b'[');
                push_ip(out, e.ip());
                out.push(b']');
            } else {
                push_ip(out, e.ip());
            }
            out.push(b':');
            push_u64(out, u64::from(e.port()));
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, r.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(out, r.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match r.upstream {
        Some(d) => push_millis(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"trace_id\":");
    match r.trace_id {
        Some(t) => {
            out.push(b'"');
            escape_bytes(out, t);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"worker\":");
    push_u64(out, r.worker as u64);
    out.push(b'}');
}

/// Starts an audit line: `{"time":"...","type":"audit","event":"<event>"`.
/// The caller adds fields (`,"key":value`) and the closing `}`.
pub fn audit_start(out: &mut Vec<u8>, clock: &Clock, event: &str) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write_now(out);
    out.extend_from_slice(b"\",\"type\":\"audit\",\"event\":\"");
    escape_bytes(out, event.as_bytes());
    out.push(b'"');
}

/// Appends `,"key":"value"` with the value escaped.
pub fn field_str(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":\"");
    escape_bytes(out, value);
    out.push(b'"');
}

/// Appends `,"key":n`.
pub fn field_u64(out: &mut Vec<u8>, key: &str, value: u64) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    push_u64(out, value);
}

fn opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.push(b'"');
            escape_bytes(out, s.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `?a=1&b&c=2` -> `?a=***&b&c=***`.
fn redact_query(out: &mut Vec<u8>, query: &[u8]) {
    out.push(b'?');
    let query = query.strip_prefix(b"?").unwrap_or(query);
    for (i, param) in query.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        match param.iter().position(|&b| b == b'=') {
            Some(eq) => {
                escape_bytes(out, &param[..eq]);
                out.extend_from_slice(b"=***");
            }
            None => escape_bytes(out, param),
        }
    }
}

/// Bytes a JSON string in a log line carries as they are: printable ASCII
/// but `"` and `\`. One table lookup per byte instead of three comparisons.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// JSON string content: `"` and `\` escaped, everything outside printable
/// ASCII as `\u00XX` (request bytes need not be UTF-8).
pub fn escape_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut rest = bytes;
    // Copy runs that need no escaping in one go.
    while let Some(i) = rest.iter().position(|&b| !PLAIN[usize::from(b)]) {
        out.extend_from_slice(&rest[..i]);
        let b = rest[i];
        rest = &rest[i + 1..];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(rest);
}

/// Milliseconds with microsecond precision: `12.345`.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, us / 1000);
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Wall-clock timestamps for log lines, `2026-11-23T10:00:00.123Z`. The
/// date and time part is formatted once per second per worker.
#[derive(Default)]
pub struct Clock {
    second: Cell<u64>,
    text: Cell<[u8; 19]>,
}

impl Clock {
    pub fn write_now(&self, out: &mut Vec<u8>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.write_at(out, now);
    }

    fn write_at(&self, out: &mut Vec<u8>, since_epoch: Duration) {
        let secs = since_epoch.as_secs();
        if self.second.get() != secs || secs == 0 {
            self.second.set(secs);
            self.text.set(civil(secs));
        }
        out.extend_from_slice(&self.text.get());
        let ms = since_epoch.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (ms / 100) as u8,
            b'0' + (ms / 10 % 10) as u8,
            b'0' + (ms % 10) as u8,
            b'Z',
        ]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for seconds since the epoch (days to civil
/// date after Howard Hinnant's `civil_from_days`).
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut t = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, v: i64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            t[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, (rem / 3600) as i64, 2);
    put(14, (rem / 60 % 60) as i64, 2);
    put(17, (rem % 60) as i64, 2);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, ms: u32) -> String {
        let mut out = Vec::new();
        Clock::default().write_at(&mut out, Duration::new(secs, ms * 1_000_000));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn timestamps() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_795_435_199, 999), "2026-11-23T11:59:59.999Z");
    }

    #[test]
    fn query_redaction_keeps_names_only() {
        let mut out = Vec::new();
        redact_query(&mut out, b"?token=abc&x&api_key=s3cr3t");
        assert_eq!(out, b"?token=***&x&api_key=***");
    }

    #[test]
    fn escaping_yields_json() {
        let mut out = Vec::new();
        escape_bytes(&mut out, b"a\"b\\c\x01\xff-end");
        assert_eq!(out, br#"a\"b\\c\u0001\u00ff-end"#);
    }

    #[test]
    fn every_byte_reads_back_from_the_json_string() {
        let all: Vec<u8> = (0..=255u8).collect();
        let mut out = b"\"".to_vec();
        escape_bytes(&mut out, &all);
        out.push(b'"');
        let back: String = serde_json::from_slice(&out).unwrap();
        // Bytes above 0x7f come back as the code points U+0080..U+00FF.
        let back: Vec<u8> = back
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap())
            .collect();
        assert_eq!(back, all);
        let copied = out.iter().filter(|b| (0x20..0x7f).contains(*b)).count();
        assert_eq!(copied, out.len(), "the line stays printable ASCII");
    }

    #[test]
    fn access_line_is_json_without_query_values() {
        let mut out = Vec::new();
        let r = AccessRecord {
            request_id: b"id-1",
            client: "::ffff:10.0.0.1".parse().unwrap(),
            method: b"GET",
            path: b"/a\"b",
            query: b"?secret=1",
            route: Some("r"),
            cluster: None,
            endpoint: Some("127.0.0.1:80".parse().unwrap()),
            status: 200,
            bytes_in: 10,
            bytes_out: 20,
            duration: Duration::from_micros(1_234_567),
            upstream: None,
            trace_id: None,
            worker: 1,
        };
        write_access(&mut out, &Clock::default(), &r, QueryMode::Redact);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#""client_ip":"10.0.0.1""#), "{line}");
        assert!(line.contains(r#""path":"/a\"b?secret=***""#), "{line}");
        assert!(line.contains(r#""duration_ms":1234.567"#), "{line}");
        assert!(line.contains(r#""cluster":null"#), "{line}");
        assert!(line.contains(r#""endpoint":"127.0.0.1:80""#), "{line}");
        assert!(!line.contains("=1"), "{line}");
    }
}

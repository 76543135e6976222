//! W3C Trace Context (`traceparent`, `tracestate`).
//!
//! In `propagate` mode both headers pass through untouched, as any other
//! end-to-end field. In `start` mode a request without a valid
//! `traceparent` gets a new one (random trace id and parent id, sampled
//! flag set) and any invalid `traceparent` and its `tracestate` are
//! dropped, as the specification asks of a participant that cannot parse
//! them. The trace id goes into the access log either way.

use std::cell::Cell;

use crate::http::response::hex16;

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub const TRACEPARENT_LEN: usize = 55;

/// How the gateway treats trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceMode {
    Propagate,
    Start,
}

/// The trace id of a valid `traceparent` value (version 00 rules; later
/// versions are accepted by their first four fields, as the spec requires).
pub fn trace_id(value: &[u8]) -> Option<&[u8]> {
    let v = value.trim_ascii();
    if v.len() < TRACEPARENT_LEN || (v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-') {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let ok = v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && lower_hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == TRACEPARENT_LEN)
        && lower_hex(trace)
        && trace.iter().any(|&b| b != b'0')
        && lower_hex(parent)
        && parent.iter().any(|&b| b != b'0')
        && lower_hex(flags);
    ok.then_some(trace)
}

/// Per-worker source of new trace and parent ids.
pub struct TraceIds {
    state: Cell<u64>,
}

impl TraceIds {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Cell::new(seed | 1),
        }
    }

    fn next(&self) -> u64 {
        // splitmix64: well spread, never repeats within 2^64 calls.
        let s = self.state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new `traceparent` value.
    pub fn generate(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-01";
        hex16(&mut out[3..19], self.next());
        hex16(&mut out[19..35], self.next());
        hex16(&mut out[36..52], self.next() | 1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_refuses_invalid() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(good),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        for bad in [
            &b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may append fields.
        assert!(trace_id(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz").is_some());
    }

    #[test]
    fn generated_values_are_valid_and_distinct() {
        let ids = TraceIds::new(42);
        let a = ids.generate();
        let b = ids.generate();
        assert!(trace_id(&a).is_some());
        assert_ne!(trace_id(&a), trace_id(&b));
    }
}

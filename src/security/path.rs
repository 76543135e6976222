//! Request path normalisation, done once before routing so that a path
//! cannot reach a route (or escape one) by being spelled differently from
//! how the upstream will read it.
//!
//! Steps, on the path without its query:
//! 1. Percent-decoding, once: escapes of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`, RFC 3986 2.3) are decoded; every other escape
//!    is kept with uppercase hex (RFC 3986 6.2.2.1), since decoding `%3F`
//!    or `%2F` would change what the path means.
//! 2. Dot segments are resolved (RFC 3986 5.2.4) and empty segments merged
//!    (`//admin` is `/admin`), after decoding, so `/%2e%2e/` is `/../`.
//! 3. What is always refused (400): NUL and control bytes, raw or encoded;
//!    malformed escapes; a dot segment carrying parameters (`..;x`), which
//!    servlet containers read as `..`.
//! 4. What is refused unless the route opts in ([`Anomalies`]): an encoded
//!    `/` (`%2F`), a backslash (raw or `%5C`), double encoding (`%25`
//!    followed by two hex digits), and escapes that decode to invalid UTF-8.
//!
//! The upstream receives the normalised path.

/// Properties of a path that routes refuse unless they allow them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Anomalies(pub u8);

impl Anomalies {
    pub const ENCODED_SLASH: u8 = 1;
    pub const BACKSLASH: u8 = 2;
    pub const DOUBLE_ENCODING: u8 = 4;
    pub const INVALID_UTF8: u8 = 8;

    /// Config names, for `allow_path = [...]`.
    pub const NAMES: [(&'static str, u8); 4] = [
        ("encoded_slash", Self::ENCODED_SLASH),
        ("backslash", Self::BACKSLASH),
        ("double_encoding", Self::DOUBLE_ENCODING),
        ("invalid_utf8", Self::INVALID_UTF8),
    ];

    /// Whether every anomaly present is in `allowed`.
    pub fn allowed_by(self, allowed: Anomalies) -> bool {
        self.0 & !allowed.0 == 0
    }
}

/// A path no route may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// NUL or a control byte, raw or encoded.
    Control,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A `.` or `..` segment with `;` parameters.
    DotParameters,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Ends a run of decoded non-ASCII bytes, noting whether it was UTF-8.
fn check_run(run: &mut [u8; 4], len: &mut usize, bad: &mut bool) {
    if *len > 0 && std::str::from_utf8(&run[..*len]).is_err() {
        *bad = true;
    }
    *len = 0;
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Bytes a path in normal form may hold: `/`, unreserved characters and
/// sub-delimiters, `:` and `@` (RFC 3986 3.3). `%`, a backslash, controls and
/// non-ASCII bytes need the full pass.
const NORMAL: [bool; 256] = {
    let mut t = [false; 256];
    let ok = b"/-._~!$&'()*+,;=:@";
    let mut i = 0;
    while i < ok.len() {
        t[ok[i] as usize] = true;
        i += 1;
    }
    let mut b = 0;
    while b < 256 {
        t[b] = t[b] || (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    t
};

/// Whether [`normalize`] would return `raw` unchanged and unflagged: it
/// starts with `/`, needs no decoding, and no segment is empty or starts
/// with a dot (so none is `.`, `..` or `..;x`). Most request paths are;
/// they skip the decoding and segment passes.
fn is_normal(raw: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in raw.iter().enumerate() {
        let after_slash = i > 0 && prev == b'/';
        if !NORMAL[usize::from(b)] || (after_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    raw.first() == Some(&b'/')
}

/// Normalises `raw` into `out`, using `scratch` as working space (both are
/// cleared first; their capacity is reused across requests).
///
/// # Errors
/// [`PathError`] for paths that are always refused.
pub fn normalize(
    raw: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<Anomalies, PathError> {
    out.clear();
    scratch.clear();
    if is_normal(raw) {
        out.extend_from_slice(raw);
        return Ok(Anomalies::default());
    }
    full_pass(raw, out, scratch)
}

/// [`normalize`]'s decoding and segment passes, into cleared buffers.
fn full_pass(raw: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>) -> Result<Anomalies, PathError> {
    if raw == b"*" {
        out.push(b'*');
        return Ok(Anomalies::default());
    }
    let mut flags = 0u8;
    // Step 1 into `scratch` (canonical escapes); the fully decoded bytes of
    // non-ASCII escapes are checked for UTF-8 as runs end.
    let mut utf8_run = [0u8; 4];
    let mut utf8_len = 0usize;
    let mut utf8_bad = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex_value),
                raw.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h << 4 | l;
            i += 3;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::Control);
            }
            if v >= 0x80 {
                // Part of a (possibly multi-byte) UTF-8 sequence.
                if utf8_len == 4 || (utf8_len > 0 && v & 0xc0 != 0x80) {
                    check_run(&mut utf8_run, &mut utf8_len, &mut utf8_bad);
                }
                utf8_run[utf8_len] = v;
                utf8_len += 1;
                scratch.extend_from_slice(&[
                    b'%',
                    HEX_UPPER[usize::from(h)],
                    HEX_UPPER[usize::from(l)],
                ]);
                continue;
            }
            check_run(&mut utf8_run, &mut utf8_len, &mut utf8_bad);
            match v {
                b'/' => flags |= Anomalies::ENCODED_SLASH,
                b'\\' => flags |= Anomalies::BACKSLASH,
                b'%' if raw.get(i).copied().and_then(hex_value).is_some()
                    && raw.get(i + 1).copied().and_then(hex_value).is_some() =>
                {
                    flags |= Anomalies::DOUBLE_ENCODING;
                }
                _ => {}
            }
            if is_unreserved(v) {
                scratch.push(v);
            } else {
                scratch.extend_from_slice(&[
                    b'%',
                    HEX_UPPER[usize::from(h)],
                    HEX_UPPER[usize::from(l)],
                ]);
            }
            continue;
        }
        check_run(&mut utf8_run, &mut utf8_len, &mut utf8_bad);
        if b < 0x20 || b == 0x7f {
            return Err(PathError::Control);
        }
        if b == b'\\' {
            flags |= Anomalies::BACKSLASH;
        }
        if b >= 0x80 {
            // The request parser refuses raw non-ASCII targets; kept for
            // callers that do not.
            flags |= Anomalies::INVALID_UTF8;
        }
        scratch.push(b);
        i += 1;
    }
    check_run(&mut utf8_run, &mut utf8_len, &mut utf8_bad);
    if utf8_bad {
        flags |= Anomalies::INVALID_UTF8;
    }

    // Step 2: segments of `scratch` into `out`.
    out.push(b'/');
    let trailing = scratch.ends_with(b"/")
        || scratch.ends_with(b"/.")
        || scratch.ends_with(b"/..")
        || scratch == b"."
        || scratch == b"..";
    for seg in scratch.split(|&b| b == b'/') {
        let bare = match seg.iter().position(|&b| b == b';') {
            Some(p) => {
                if matches!(&seg[..p], b"." | b"..") {
                    return Err(PathError::DotParameters);
                }
                seg
            }
            None => seg,
        };
        match bare {
            b"" | b"." => {}
            b".." => {
                // Drop the last segment (never above the root).
                out.pop();
                match out.iter().rposition(|&b| b == b'/') {
                    Some(p) => out.truncate(p + 1),
                    None => out.push(b'/'),
                }
                if out.is_empty() {
                    out.push(b'/');
                }
            }
            seg => {
                if out.last() != Some(&b'/') {
                    out.push(b'/');
                }
                out.extend_from_slice(seg);
                out.push(b'/');
            }
        }
    }
    if !trailing && out.len() > 1 {
        out.pop();
    }
    Ok(Anomalies(flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<(String, u8), PathError> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let a = normalize(p.as_bytes(), &mut out, &mut scratch)?;
        Ok((String::from_utf8(out).unwrap(), a.0))
    }

    fn ok(p: &str) -> String {
        let (s, flags) = norm(p).unwrap();
        assert_eq!(flags, 0, "{p}");
        s
    }

    #[test]
    fn paths_in_normal_form_take_the_fast_path_unchanged() {
        for p in [
            "/",
            "/small",
            "/a/b/",
            "/v1/users/42;v=2",
            "/f.json",
            "/a-b_c~d!$&'()*+,=:@",
        ] {
            assert!(is_normal(p.as_bytes()), "{p}");
            assert_eq!(ok(p), p);
        }
        for p in [
            "",
            "*",
            "a",
            "//a",
            "/a//b",
            "/.",
            "/..",
            "/a/.",
            "/a/..",
            "/.well-known",
            "/..;x",
            "/a%41",
            "/a\\b",
            "/caf\u{e9}",
            "/a b",
            "/a\tb",
            "/a\u{7f}",
        ] {
            assert!(!is_normal(p.as_bytes()), "{p:?}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_pass() {
        // Every path of up to five bytes over an alphabet of the bytes
        // that matter to either pass.
        let alphabet = b"/.a;%2f\\";
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = paths.clone();
        for _ in 0..5 {
            let next: Vec<Vec<u8>> = last
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |&b| {
                        let mut q = p.clone();
                        q.push(b);
                        q
                    })
                })
                .collect();
            paths.extend(next.iter().cloned());
            last = next;
        }
        let mut fast = 0;
        for p in &paths {
            if is_normal(p) {
                fast += 1;
                let (mut out, mut scratch) = (Vec::new(), Vec::new());
                let flags = full_pass(p, &mut out, &mut scratch);
                assert_eq!(flags, Ok(Anomalies(0)), "{:?}", String::from_utf8_lossy(p));
                assert_eq!(&out, p, "{:?}", String::from_utf8_lossy(p));
            }
        }
        assert!(fast > 100, "{fast}");
    }

    #[test]
    fn resolves_dot_segments_and_merges_slashes() {
        assert_eq!(ok("/"), "/");
        assert_eq!(ok(""), "/");
        assert_eq!(ok("/a/b/c"), "/a/b/c");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("//admin"), "/admin");
        assert_eq!(ok("/a//b///c"), "/a/b/c");
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/../../admin"), "/admin");
        assert_eq!(ok("/public/../admin"), "/admin");
        assert_eq!(ok("/.."), "/");
    }

    #[test]
    fn decodes_unreserved_once_and_keeps_the_rest_encoded() {
        assert_eq!(ok("/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/public/%2E%2E/admin"), "/admin");
        assert_eq!(ok("/%61dmin"), "/admin");
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/a%20b"), "/a%20b");
        assert_eq!(ok("/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(ok("/a;b=c/d"), "/a;b=c/d");
    }

    #[test]
    fn refuses_controls_bad_escapes_and_dot_parameters() {
        assert_eq!(norm("/a%00b"), Err(PathError::Control));
        assert_eq!(norm("/a%0d%0a"), Err(PathError::Control));
        assert_eq!(norm("/a%7f"), Err(PathError::Control));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/admin/..;/"), Err(PathError::DotParameters));
        assert_eq!(norm("/public/..;x=1/admin"), Err(PathError::DotParameters));
        assert_eq!(norm("/a/.;/b"), Err(PathError::DotParameters));
    }

    #[test]
    fn flags_what_routes_must_opt_into() {
        assert_eq!(
            norm("/a%2Fb").unwrap(),
            ("/a%2Fb".into(), Anomalies::ENCODED_SLASH)
        );
        assert_eq!(
            norm("/a%2fb").unwrap(),
            ("/a%2Fb".into(), Anomalies::ENCODED_SLASH)
        );
        assert_eq!(norm("/a%5cb").unwrap().1, Anomalies::BACKSLASH);
        assert_eq!(norm("/a\\b").unwrap().1, Anomalies::BACKSLASH);
        assert_eq!(
            norm("/%252e%252e/admin").unwrap().1,
            Anomalies::DOUBLE_ENCODING
        );
        assert_eq!(norm("/100%25").unwrap(), ("/100%25".into(), 0));
        assert_eq!(norm("/%C3%28").unwrap().1, Anomalies::INVALID_UTF8);
        assert_eq!(norm("/%E9").unwrap().1, Anomalies::INVALID_UTF8);
        assert_eq!(norm("/%C3%A9%C3%A9").unwrap().1, 0);
        assert!(Anomalies(Anomalies::ENCODED_SLASH)
            .allowed_by(Anomalies(Anomalies::ENCODED_SLASH | Anomalies::BACKSLASH)));
        assert!(!Anomalies(Anomalies::BACKSLASH).allowed_by(Anomalies(0)));
    }
}

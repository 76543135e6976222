use super::*;

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 128,
    max_header_bytes: 1024,
    max_headers: 8,
};

fn parse(raw: &[u8]) -> Result<(Parse, RequestHead), HeadError> {
    let mut head = RequestHead::default();
    parse_request(raw, &LIMITS, &mut head).map(|p| (p, head))
}

fn complete(raw: &[u8]) -> RequestHead {
    match parse(raw) {
        Ok((Parse::Complete, head)) => head,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn refused(raw: &[u8]) -> HeadError {
    match parse(raw) {
        Err(e) => e,
        Ok(other) => panic!("accepted {:?}: {other:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn simple_get() {
    let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nX-Request-Id: abc-1\r\n\r\nNEXT";
    let h = complete(raw);
    let v = RequestView { head: &h, buf: raw };
    assert_eq!(h.method, Method::Get);
    assert_eq!(v.path(), b"/a/b");
    assert_eq!(v.query(), b"?x=1");
    assert_eq!(v.host(), Some(&b"Example.com"[..]));
    assert_eq!(h.framing, Framing::Empty);
    assert!(h.keep_alive);
    assert_eq!(h.request_id.map(|s| s.get(raw)), Some(&b"abc-1"[..]));
    assert_eq!(&raw[h.len..], b"NEXT");
}

#[test]
fn partial_until_blank_line() {
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().0,
        Parse::Partial
    );
    assert_eq!(parse(b"GET / HT").unwrap().0, Parse::Partial);
}

#[test]
fn framing_and_connection() {
    let h = complete(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(h.framing, Framing::Length(12));
    let h = complete(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(h.framing, Framing::Chunked);
    assert!(!h.keep_alive);
    let h = complete(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!h.keep_alive, "HTTP/1.0 closes by default");
    let h = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(h.keep_alive);
    let h =
        complete(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n");
    assert!(h.expect_continue);
}

#[test]
fn absolute_form_takes_host_from_target() {
    let raw = b"GET http://api.example.com:8080/x?q HTTP/1.1\r\nHost: other\r\n\r\n";
    let h = complete(raw);
    let v = RequestView { head: &h, buf: raw };
    assert_eq!(v.host(), Some(&b"api.example.com:8080"[..]));
    assert_eq!(v.path(), b"/x");
    assert_eq!(v.query(), b"?q");
}

#[test]
fn smuggling_vectors_are_refused() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET example.com HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for raw in cases {
        assert!(
            matches!(refused(raw), HeadError::Malformed(_)),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn limits_have_their_own_errors() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
    assert_eq!(refused(long.as_bytes()), HeadError::UriTooLong);
    let partial_long = format!("GET /{}", "a".repeat(200));
    assert_eq!(refused(partial_long.as_bytes()), HeadError::UriTooLong);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "b".repeat(1100)
    );
    assert_eq!(refused(big.as_bytes()), HeadError::HeadersTooLarge);
    let partial_big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "b".repeat(1100));
    assert_eq!(refused(partial_big.as_bytes()), HeadError::HeadersTooLarge);
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    assert_eq!(refused(raw.as_bytes()), HeadError::HeadersTooLarge);
}

#[test]
fn unsafe_request_ids_are_ignored() {
    let h = complete(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\"b\r\n\r\n");
    assert!(h.request_id.is_none());
}

#[test]
fn content_length_values() {
    assert_eq!(parse_content_length(b"0"), Some(0));
    assert_eq!(parse_content_length(b" 42 "), Some(42));
    assert_eq!(parse_content_length(b"18446744073709551615"), None);
    assert_eq!(parse_content_length(b""), None);
    assert_eq!(parse_content_length(b"4 2"), None);
}

fn response(raw: &[u8], head_request: bool) -> Result<ResponseHead, HeadError> {
    let mut head = ResponseHead::default();
    parse_response(raw, 4096, head_request, &mut head).map(|p| {
        assert_eq!(p, Parse::Complete);
        head
    })
}

#[test]
fn response_framing() {
    let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).unwrap();
    assert_eq!(
        (r.status, r.framing, r.keep_alive),
        (200, Framing::Length(5), true)
    );
    let r = response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(r.framing, Framing::Chunked);
    let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
    assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
    let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
    assert_eq!(r.framing, Framing::Empty);
    for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
        let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(
            response(raw.as_bytes(), false).unwrap().framing,
            Framing::Empty
        );
    }
    let r = response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
    assert!(!r.keep_alive);
    assert!(response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        false
    )
    .is_err());
    assert!(response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        false
    )
    .is_err());
    assert!(response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false).is_err());
}

#[test]
fn response_reason_with_obs_text_is_dropped() {
    // httparse reports a reason phrase holding obs-text as "", a string
    // outside the buffer: its span must still be one of the buffer's.
    let raw = b"HTTP/1.1 200 D\xe9j\xe0 vu\r\nContent-Length: 2\r\n\r\nok";
    let r = response(raw, false).unwrap();
    assert_eq!((r.status, r.framing), (200, Framing::Length(2)));
    assert_eq!(r.reason.get(raw), b"");
    let r = response(b"HTTP/1.1 404 Not Found\r\n\r\n", false).unwrap();
    assert_eq!(
        r.reason.get(b"HTTP/1.1 404 Not Found\r\n\r\n"),
        b"Not Found"
    );
}

#[test]
fn response_status_codes_outside_100_to_599_are_refused() {
    for code in ["000", "099", "600", "900", "999"] {
        let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
        assert!(
            matches!(
                response(raw.as_bytes(), false),
                Err(HeadError::Malformed(_))
            ),
            "{code}"
        );
    }
    for code in [100, 103, 209, 290, 599] {
        let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(response(raw.as_bytes(), false).unwrap().status, code);
    }
}

/// Mutations of valid heads (bytes replaced, inserted, removed, the head
/// cut short) from a fixed seed: the parsers return, never panic, and
/// every span of a complete head lies within the buffer it came from.
#[test]
fn mutated_heads_never_panic_and_spans_stay_in_the_buffer() {
    let requests: [&[u8]; 3] = [
        b"GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Request-Id: abc\r\nConnection: keep-alive, x\r\n\r\n",
        b"POST http://h:8080/p HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    let responses: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, x\r\n\r\nok",
        b"HTTP/1.0 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    // Bytes that matter to the grammar, plus obs-text and controls.
    let alphabet = b"\r\n \t:,/?%.0129aHT\x00\x7f\x80\xe9\xff";
    let mut m = crate::mutate::Mutator::new(0x9e37_79b9_7f4a_7c15);
    let mut req = RequestHead::default();
    let mut resp = ResponseHead::default();
    for round in 0..200_000 {
        let seeds = if round % 2 == 0 {
            &requests
        } else {
            &responses
        };
        let mut raw = seeds[m.below(seeds.len())].to_vec();
        let edits = 1 + m.below(4);
        m.mutate(&mut raw, alphabet, edits, true);
        if round % 2 == 0 {
            if let Ok(Parse::Complete) = parse_request(&raw, &LIMITS, &mut req) {
                let v = RequestView {
                    head: &req,
                    buf: &raw,
                };
                let _ = (v.path(), v.query(), v.host(), req.method_span.get(&raw));
                let _ = req.request_id.map(|s| s.get(&raw));
                for h in &req.headers {
                    let _ = (h.name.get(&raw), h.value.get(&raw), &raw[h.line()]);
                }
                assert!(req.len <= raw.len());
            }
        } else if let Ok(Parse::Complete) = parse_response(&raw, 4096, round % 3 == 0, &mut resp) {
            let _ = resp.reason.get(&raw);
            for h in &resp.headers {
                let _ = (h.name.get(&raw), h.value.get(&raw), &raw[h.line()]);
            }
            assert!(resp.len <= raw.len());
        }
    }
}

//! Strict HTTP/1.1 framing: every smuggling vector is refused with 400 and a
//! closed connection, the upstream never receives a request, and limits
//! answer with their own statuses.

use crate::common::*;

fn setup(driver: &str, extra: &str) -> (Upstream, Gateway) {
    let up = Upstream::new(Reply::ok("reached"));
    let body = format!(
        "[limits]\nmax_request_line = 256\nmax_header_bytes = 2048\nmax_headers = 16\nmax_body_bytes = 1024\n{extra}\n{}{}",
        cluster("c", &[&up], ""),
        route_all("c")
    );
    let gw = Gateway::start(&config(driver, &body));
    (up, gw)
}

/// Sends raw bytes; expects a gateway error with `status` and a closed connection.
fn refused(gw: &Gateway, raw: &[u8], status: u16) {
    let mut c = Client::connect(gw.main());
    c.send(raw);
    let r = c
        .read_response_to(false)
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)));
    assert_json_error(&r, status);
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "{:?}",
        String::from_utf8_lossy(raw)
    );
    assert!(
        c.is_closed(),
        "connection must close after {:?}",
        String::from_utf8_lossy(raw)
    );
}

const SMUGGLING: &[&[u8]] = &[
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  continued\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: bare\rcr\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: nul\0byte\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: ctl\x07byte\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"GARBAGE\r\n\r\n",
];

#[test]
fn smuggling_vectors_get_400_close_and_reach_nothing() {
    for driver in DRIVERS {
        let (up, gw) = setup(driver, "");
        for raw in SMUGGLING {
            refused(&gw, raw, 400);
        }
        assert_eq!(
            up.connections(),
            0,
            "{driver}: the upstream must not even be connected to"
        );
    }
}

#[test]
fn invalid_chunked_bodies_get_400_and_no_complete_request_upstream() {
    let (up, gw) = setup("io_uring", "");
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"5;ext\x01=1\r\nhello\r\n0\r\n\r\n",
        b"0\r\nbad trailer line\r\n\r\n",
    ] {
        let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        refused(&gw, &raw, 400);
    }
    assert_eq!(up.request_count(), 0);
}

#[test]
fn limits_answer_414_431_413() {
    let (up, gw) = setup("io_uring", "");
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(300));
    refused(&gw, long_line.as_bytes(), 414);
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(3000)
    );
    refused(&gw, big_head.as_bytes(), 431);
    let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
    refused(
        &gw,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
        431,
    );
    // Decided from Content-Length before reading the body.
    refused(
        &gw,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
        413,
    );
    // Chunked bodies are counted as they stream.
    let mut chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'x'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    refused(&gw, &chunked, 413);
    assert_eq!(up.request_count(), 0);
    // At the limit is fine.
    let mut ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\n\r\n".to_vec();
    ok.extend_from_slice(&[b'y'; 1024]);
    let mut c = Client::connect(gw.main());
    c.send(&ok);
    assert_eq!(c.read_response().text(), "reached");
}

#[test]
fn per_route_body_limit_overrides_the_global_one() {
    let up = Upstream::new(Reply::ok("reached"));
    let body = format!(
        "{}[[routes]]\nname = \"upload\"\nmatch = {{ segment_prefix = \"/upload\" }}\nmax_body_bytes = \"2KiB\"\nproxy = {{ cluster = \"c\" }}\n{}",
        cluster("c", &[&up], ""),
        "[[routes]]\nname = \"small\"\nmax_body_bytes = 10\nproxy = { cluster = \"c\" }\n"
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let post = |path: &str, n: usize| {
        let mut raw =
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        raw.extend(std::iter::repeat_n(b'z', n));
        let mut c = Client::connect(gw.main());
        c.send(&raw);
        c.read_response().status
    };
    assert_eq!(post("/upload/f", 2048), 200);
    assert_eq!(post("/upload/f", 2049), 413);
    assert_eq!(post("/other", 10), 200);
    assert_eq!(post("/other", 11), 413);
}

#[test]
fn chunked_with_trailers_both_ways() {
    for driver in DRIVERS {
        let up = Upstream::new(Reply::Chunked {
            status: 200,
            chunks: vec![b"hello ".to_vec(), b"world".to_vec()],
            trailers: vec![("x-checksum".into(), "abc".into())],
        });
        let gw = Gateway::start(&config(
            driver,
            &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
        ));
        let mut c = Client::connect(gw.main());
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;name=value\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 42\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.text(), "hello world", "{driver}");
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert_eq!(
            r.trailers,
            vec![("x-checksum".to_string(), "abc".to_string())]
        );
        let rec = &up.requests()[0];
        assert!(rec.chunked);
        assert_eq!(rec.body, b"wikipedia");
        assert_eq!(rec.trailers, vec![("X-Sum".to_string(), "42".to_string())]);
        assert_eq!(rec.header("content-length"), None);
        // The connection stays usable after a chunked exchange.
        let r = c.request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.text(), "hello world");
        assert_eq!(up.connections(), 1);
    }
}

#[test]
fn close_delimited_upstream_body_is_chunked_for_11_clients() {
    let up = Upstream::new(Reply::UntilClose {
        status: 200,
        body: b"streamed until close".to_vec(),
    });
    let gw = Gateway::start(&config(
        "io_uring",
        &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
    ));
    let mut c = Client::connect(gw.main());
    let r = c.request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "streamed until close");
    // The client connection survives; the upstream one could not be pooled.
    let r = c.request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.text(), "streamed until close");
    assert_eq!(up.connections(), 2);
}

#[test]
fn reason_phrase_with_obs_text_is_forwarded_without_it() {
    // obs-text is allowed in a reason phrase (RFC 9112 4); the gateway
    // drops the phrase rather than pass on bytes it does not read.
    let up = Upstream::new(Reply::Raw(
        b"HTTP/1.1 200 D\xe9j\xe0 vu\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    ));
    let gw = Gateway::start(&config(
        "io_uring",
        &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
    ));
    let mut c = Client::connect(gw.main());
    for _ in 0..2 {
        let r = c.request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
}

#[test]
fn invalid_upstream_responses_are_502() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let up = Upstream::new(Reply::Raw(raw.to_vec()));
        let gw = Gateway::start(&config(
            "io_uring",
            &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
        ));
        let r = get(gw.main(), "/");
        assert_json_error(&r, 502);
        assert!(
            !r.text().contains("127.0.0.1"),
            "no internal detail: {}",
            r.text()
        );
    }
}

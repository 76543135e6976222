//! Forwarding and header rewriting through the real binary.

use crate::common::*;

fn gateway(driver: &str, up: &Upstream, extra_routes: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "{}{extra_routes}{}",
            cluster("c", &[up], ""),
            route_all("c")
        ),
    ))
}

#[test]
fn forwards_request_and_response_on_both_drivers() {
    for driver in DRIVERS {
        let up = Upstream::new(Reply::status(201, &[("x-up", "1")], "created"));
        let gw = gateway(driver, &up, "");
        let r = request(
            gw.main(),
            "POST /items?id=7 HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nX-Custom: a\r\n\r\nhello",
        );
        assert_eq!((r.status, r.text().as_str()), (201, "created"), "{driver}");
        assert_eq!(r.header("x-up"), Some("1"));
        let rec = &up.requests()[0];
        assert_eq!(
            (rec.method.as_str(), rec.target.as_str()),
            ("POST", "/items?id=7")
        );
        assert_eq!(rec.body, b"hello");
        assert_eq!(rec.header("host"), Some("shop.test"));
        assert_eq!(rec.header("x-custom"), Some("a"));
        assert_eq!(rec.version, 1, "upstream side is HTTP/1.1");
    }
}

/// A response body that arrives with its head leaves with it, copied
/// behind the head up to 4 KiB and gathered from the upstream buffer
/// beyond: bodies on both sides of that line come through whole, and the
/// connection stays usable after each.
#[test]
fn bodies_that_arrive_with_the_head_come_through_whole() {
    const SIZES: [usize; 7] = [0, 1, 4000, 4096, 4097, 20_000, 40_000];
    let up = Upstream::with(|rec| {
        let len: usize = rec.target.trim_start_matches('/').parse().unwrap();
        let mut raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes();
        raw.extend_from_slice(&pattern(0, len));
        Reply::Raw(raw)
    });
    for driver in DRIVERS {
        let gw = gateway(driver, &up, "");
        let mut c = Client::connect(gw.main());
        for len in SIZES {
            let r = c.request(&format!("GET /{len} HTTP/1.1\r\nHost: t\r\n\r\n"));
            assert_eq!(r.status, 200, "{driver} {len}");
            assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
            assert!(
                r.body == pattern(0, len),
                "{driver}: body of {len} bytes altered"
            );
        }
    }
}

#[test]
fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::new(Reply::status(
        200,
        &[
            ("connection", "x-secret-resp"),
            ("x-secret-resp", "1"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "h2c"),
            ("x-fine", "y"),
        ],
        "ok",
    ));
    let gw = gateway("io_uring", &up, "");
    let r = request(
        gw.main(),
        "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nTrailer: x\r\nX-Keep: 2\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let rec = &up.requests()[0];
    for h in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "trailer",
    ] {
        assert_eq!(
            rec.header(h),
            None,
            "request header {h} must not reach the upstream"
        );
    }
    assert_eq!(rec.header("x-keep"), Some("2"));
    for h in ["x-secret-resp", "keep-alive", "upgrade", "connection"] {
        assert_eq!(
            r.header(h),
            None,
            "response header {h} must not reach the client"
        );
    }
    assert_eq!(r.header("x-fine"), Some("y"));
}

#[test]
fn forwarding_headers_and_request_id() {
    let up = Upstream::new(Reply::status(
        200,
        &[("x-request-id", "from-upstream")],
        "ok",
    ));
    let gw = gateway("io_uring", &up, "");
    // Generated when absent, the same on request and response.
    let r = request(gw.main(), "GET / HTTP/1.1\r\nHost: api.test:8080\r\n\r\n");
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    let rec = &up.requests()[0];
    assert_eq!(rec.header("x-request-id"), Some(id.as_str()));
    assert_eq!(rec.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(rec.header("x-forwarded-proto"), Some("http"));
    assert_eq!(rec.header("x-forwarded-host"), Some("api.test:8080"));
    // A client id is kept; an existing X-Forwarded-For list (in several
    // fields) is folded and appended to.
    let r = request(
        gw.main(),
        "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: client-42\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    assert_eq!(r.header("x-request-id"), Some("client-42"));
    let rec = &up.requests()[1];
    assert_eq!(rec.header("x-request-id"), Some("client-42"));
    assert_eq!(rec.header_count("x-forwarded-for"), 1);
    assert_eq!(
        rec.header("x-forwarded-for"),
        Some("203.0.113.9, 10.0.0.1, 127.0.0.1")
    );
    assert_eq!(
        rec.header("x-forwarded-proto"),
        Some("http"),
        "client copy replaced"
    );
    // Unsafe client ids are replaced by a generated one.
    let r = request(
        gw.main(),
        "GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: <script>\r\n\r\n",
    );
    assert_eq!(r.header("x-request-id").unwrap().len(), 32);
}

#[test]
fn routing_precedence_rewrites_and_direct_responses() {
    let api = Upstream::named("api");
    let v2 = Upstream::named("v2");
    let web = Upstream::named("web");
    let body = format!(
        "{}{}{}{}",
        cluster("api", &[&api], ""),
        cluster("v2", &[&v2], ""),
        cluster("web", &[&web], ""),
        r#"
[[routes]]
name = "web"
proxy = { cluster = "web" }

[[routes]]
name = "api"
match = { segment_prefix = "/api", host = "*.example.com" }
proxy = { cluster = "api", rewrite_prefix = "" }

[[routes]]
name = "api-v2"
match = { segment_prefix = "/api/v2", host = "*.example.com" }
proxy = { cluster = "v2", rewrite_prefix = "/internal/", host_rewrite = "v2.svc" }

[[routes]]
name = "health"
match = { path = "/healthz", methods = ["GET", "HEAD"] }
respond = { status = 200, headers = { "content-type" = "text/plain", "cache-control" = "no-store" }, body = "up\n" }

[[routes]]
name = "moved"
match = { path = "/old" }
respond = { status = 308, headers = { "location" = "/new" } }
"#
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let host_get = |host: &str, path: &str| {
        request(
            gw.main(),
            &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        )
    };
    assert_eq!(host_get("a.example.com", "/api/users?x=1").text(), "api");
    assert_eq!(
        api.requests()[0].target,
        "/users?x=1",
        "prefix stripped, query kept"
    );
    assert_eq!(host_get("a.example.com", "/api").text(), "api");
    assert_eq!(
        api.requests()[1].target,
        "/",
        "stripping everything leaves /"
    );
    assert_eq!(host_get("a.example.com", "/api/v2/items").text(), "v2");
    assert_eq!(v2.requests()[0].target, "/internal/items");
    assert_eq!(v2.requests()[0].header("host"), Some("v2.svc"));
    assert_eq!(
        v2.requests()[0].header("x-forwarded-host"),
        Some("a.example.com")
    );
    assert_eq!(
        host_get("a.example.com", "/apix").text(),
        "web",
        "segment-aware prefix"
    );
    assert_eq!(
        host_get("other.org", "/api/users").text(),
        "web",
        "host condition"
    );

    let r = host_get("x", "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "up\n"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-request-id").is_some());
    let r = request(gw.main(), "HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.header("content-length")), (200, Some("3")));
    assert_eq!(host_get("x", "/old").header("location"), Some("/new"));
    // POST /healthz is not the health route (methods) and falls to web.
    let r = request(
        gw.main(),
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.text(), "web");
    assert_eq!(web.request_count(), 3);
}

#[test]
fn no_route_is_404_json_and_keeps_the_connection() {
    let body = "[[routes]]\nname = \"only\"\nmatch = { path = \"/only\" }\nrespond = { status = 200, body = \"only\" }\n";
    let gw = Gateway::start(&config("io_uring", body));
    let mut c = Client::connect(gw.main());
    let r = c.request("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_json_error(&r, 404);
    let r = c.request("GET /only HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.text(), "only", "same connection still usable");
}

#[test]
fn http10_clients() {
    let up = Upstream::new(Reply::Chunked {
        status: 200,
        chunks: vec![b"ab".to_vec(), b"cd".to_vec()],
        trailers: vec![],
    });
    let gw = gateway("io_uring", &up, "");
    // 1.0 without Host, no keep-alive: the chunked upstream body is decoded
    // and delimited by close.
    let mut c = Client::connect(gw.main());
    c.send(b"GET /x HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "abcd"));
    assert_eq!(
        r.header("transfer-encoding"),
        None,
        "no chunked to a 1.0 client"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    let rec = &up.requests()[0];
    assert!(rec.header("host").is_some(), "upstream always gets a Host");
    assert_eq!(rec.version, 1);

    // 1.0 keep-alive with a Content-Length response stays open.
    let up = Upstream::new(Reply::ok("hi"));
    let gw = gateway("io_uring", &up, "");
    let mut c = Client::connect(gw.main());
    let r = c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.text(), "hi");
}

#[test]
fn head_204_304_have_no_body() {
    let up = Upstream::with(|r| match r.target.as_str() {
        "/204" => Reply::status(204, &[], ""),
        "/304" => Reply::Raw(
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 99\r\netag: \"x\"\r\n\r\n".to_vec(),
        ),
        _ => Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n".to_vec()),
    });
    let gw = gateway("io_uring", &up, "");
    let mut c = Client::connect(gw.main());
    let r = c.request("HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("1234")),
        "HEAD keeps the length"
    );
    let r = c.request("GET /204 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 204);
    let r = c.request("GET /304 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.header("etag")), (304, Some("\"x\"")));
    // The connection is still in sync: a body-less response consumed nothing.
    let r = c.request("HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        up.connections(),
        1,
        "upstream connection reused across all four"
    );
}

#[test]
fn expect_100_continue() {
    let up = Upstream::new(Reply::ok("got it"));
    let gw = gateway("io_uring", &up, "");
    let mut c = Client::connect(gw.main());
    c.send(b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut line).unwrap();
    assert_eq!(
        line, "HTTP/1.1 100 Continue\r\n",
        "gateway invites the body"
    );
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut blank).unwrap();
    c.send(b"data");
    let r = c.read_response();
    assert_eq!(r.text(), "got it");
    let rec = &up.requests()[0];
    assert_eq!(rec.body, b"data");
    assert_eq!(
        rec.header("expect"),
        None,
        "expectation handled by the gateway"
    );
}

#[test]
fn interim_responses_reach_http11_clients() {
    let up = Upstream::new(Reply::Raw(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    ));
    let gw = gateway("io_uring", &up, "");
    let mut c = Client::connect(gw.main());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut first).unwrap();
    assert_eq!(first, "HTTP/1.1 103 Early Hints\r\n");
    let mut link = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut link).unwrap();
    assert_eq!(link, "link: </a.css>; rel=preload\r\n");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut blank).unwrap();
    assert_eq!(blank, "\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::with(|r| Reply::ok(&r.target));
    let gw = gateway("io_uring", &up, "");
    let mut c = Client::connect(gw.main());
    c.send(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    for want in ["/1", "/2", "/3"] {
        assert_eq!(c.read_response().text(), want);
    }
    assert_eq!(up.requests()[1].body, b"abc");
}

#[test]
fn works_with_a_real_http_client() {
    let up = Upstream::with(|r| Reply::ok(&format!("{} {}", r.method, r.target)));
    let gw = gateway("io_uring", &up, "");
    let agent = ureq::Agent::new_with_defaults();
    let base = format!("http://{}", gw.main());
    for i in 0..20 {
        let mut r = agent.get(&format!("{base}/n/{i}")).call().unwrap();
        assert_eq!(
            r.body_mut().read_to_string().unwrap(),
            format!("GET /n/{i}")
        );
    }
    let mut r = agent.post(&format!("{base}/p")).send("payload").unwrap();
    assert_eq!(r.body_mut().read_to_string().unwrap(), "POST /p");
    assert_eq!(up.requests().last().unwrap().body, b"payload");
}

#[test]
fn via_is_added_when_configured() {
    let up = Upstream::new(Reply::ok("ok"));
    let text = config(
        "io_uring",
        &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
    )
    .replace("[server]\n", "[server]\nvia = true\n");
    let gw = Gateway::start(&text);
    let r = get(gw.main(), "/");
    assert_eq!(r.header("via"), Some("1.1 ringgate"));
    assert_eq!(up.requests()[0].header("via"), Some("1.1 ringgate"));
    // Off by default.
    let plain = gateway("io_uring", &up, "");
    assert_eq!(get(plain.main(), "/").header("via"), None);
    assert_eq!(up.requests()[1].header("via"), None);
}

#[test]
fn stalled_upstream_body_cuts_the_response() {
    // A head promising 10 bytes, 3 bytes, then silence.
    let up = Upstream::new(Reply::Raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
    ));
    let body = format!(
        "[timeouts]\nupstream_idle = \"300ms\"\n{}{}",
        cluster("c", &[&up], ""),
        route_all("c")
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let mut c = Client::connect(gw.main());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut c.reader, &mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\nabc"),
        "the client sees a short body, then the close: {text}"
    );
}

/// Data segments a socket has received: `tcpi_data_segs_in` of `TCP_INFO`
/// (Linux 4.6), at byte 152 of `struct tcp_info`.
fn data_segments_in(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    assert!(
        len >= 156,
        "TCP_INFO of {len} bytes has no tcpi_data_segs_in"
    );
    u32::from_ne_bytes(info[152..156].try_into().unwrap())
}

/// A request body of known length leaves for the upstream in full
/// segments: the head and every piece of the body but the last are sent
/// saying more follows (`MSG_MORE`), so the kernel fills one segment
/// across the gateway's 16 KiB reads and the upstream is woken once for
/// it. A 24 KiB body and its head, which fit a new connection's window
/// (so the upstream's reading pace cannot cut them), arrive in one
/// segment, where pushing the head and each read's bytes as they come
/// takes three.
#[test]
fn a_body_of_known_length_reaches_the_upstream_in_full_segments() {
    use std::io::{Read, Write};
    const BODY: usize = 24 * 1024;
    for driver in DRIVERS {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            let body_at = loop {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the gateway closed mid-request");
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    if got.len() >= end + 4 + BODY {
                        break end + 4;
                    }
                }
            };
            let segments = data_segments_in(&s);
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            (segments, got.split_off(body_at))
        });
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[[clusters]]\nname = \"c\"\nendpoints = [\"{addr}\"]\n\n{}",
                route_all("c")
            ),
        ));
        let mut c = Client::connect(gw.main());
        let mut req = format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n")
            .into_bytes();
        req.extend_from_slice(&pattern(0, BODY));
        c.send(&req);
        assert_eq!(c.read_response().status, 200, "{driver}");
        let (segments, body) = upstream.join().unwrap();
        assert!(body == pattern(0, BODY), "{driver}: the body changed");
        assert!(
            segments <= 2,
            "{driver}: {segments} data segments for a 24 KiB body and its head"
        );
    }
}

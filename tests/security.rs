//! Edge security on the real binary: path normalisation against classic
//! bypasses, client address behind trusted proxies, IP allow/deny lists
//! (inline and 100,000-line files reloaded on change), response header
//! policy, CORS and request validation. Refused requests must never reach
//! the upstream.

use std::io::Write as _;

use crate::common::*;

fn two_routes(up: &Upstream, protected: &str) -> String {
    format!(
        "{}
[[routes]]
name = \"admin\"
match = {{ segment_prefix = \"/admin\", ignore_case = true }}
proxy = {{ cluster = \"c\" }}
{protected}

[[routes]]
name = \"files\"
match = {{ segment_prefix = \"/files\" }}
proxy = {{ cluster = \"c\" }}
allow_path = [\"encoded_slash\"]

[[routes]]
name = \"public\"
proxy = {{ cluster = \"c\" }}
",
        cluster("c", &[up], "")
    )
}

#[test]
fn path_bypasses_cannot_reach_a_protected_route() {
    for driver in DRIVERS {
        let up = Upstream::named("up");
        // Only 10.0.0.0/8 may use /admin; the test client is 127.0.0.1.
        let gw = Gateway::start(&config(
            driver,
            &two_routes(&up, "ip_filter = { allow = [\"10.0.0.0/8\"] }"),
        ));
        let mut c = Client::connect(gw.main());
        for (path, status) in [
            ("/admin", 403),
            ("/admin/users", 403),
            ("//admin", 403),
            ("/ADMIN", 403),
            ("/Admin/users", 403),
            ("/%2e%2e/admin", 403),
            ("/public/../admin", 403),
            ("/public/%2E%2E/admin/x", 403),
            ("/public/./../admin", 403),
            ("/%61dmin", 403),
            ("/admin/..;/", 400),
            ("/public/..;/admin", 400),
            ("/%252e%252e/admin", 400),
            ("/public%2f..%2fadmin", 400),
            ("/public%5c..%5cadmin", 400),
            ("/admin%00", 400),
            ("/a%zz", 400),
            ("/caf%C3%28", 400),
        ] {
            let r = c.get(path);
            assert_json_error(&r, status);
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{path}"
            );
        }
        assert_eq!(
            up.request_count(),
            0,
            "nothing refused reached the upstream"
        );

        // What passes reaches the upstream normalised.
        assert_eq!(c.get("/public/./a//b/../c?x=%2e").status, 200);
        assert_eq!(c.get("/files/a%2fb").status, 200);
        assert_eq!(c.get("/%7Euser/caf%c3%a9").status, 200);
        let reqs = up.wait_requests(3);
        assert_eq!(reqs[0].target, "/public/a/c?x=%2e");
        assert_eq!(reqs[1].target, "/files/a%2Fb");
        assert_eq!(reqs[2].target, "/~user/caf%C3%A9");
    }
}

#[test]
fn client_address_and_ip_filters_v4_and_v6() {
    let up = Upstream::named("up");
    let routes = format!(
        "[security]\ntrusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n\
         [security.ip_filter]\ndeny = [\"203.0.113.0/24\", \"2001:db8:bad::/48\"]\n\n{}
[[routes]]
name = \"partners\"
match = {{ segment_prefix = \"/partners\" }}
proxy = {{ cluster = \"c\" }}
ip_filter = {{ allow = [\"198.51.100.0/24\", \"2001:db8:1::/48\"], deny = [\"198.51.100.66\"] }}

[[routes]]
name = \"public\"
proxy = {{ cluster = \"c\" }}
",
        cluster("c", &[&up], "")
    );
    let gw = Gateway::start(&config("epoll", &routes));
    let mut c = Client::connect(gw.main());
    let mut send = |path: &str, xff: &str| {
        let xff = if xff.is_empty() {
            String::new()
        } else {
            format!("X-Forwarded-For: {xff}\r\n")
        };
        c.request(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n{xff}\r\n"))
            .status
    };
    // global deny, v4 and v6, wherever the route
    assert_eq!(send("/any", "203.0.113.5"), 403);
    assert_eq!(send("/any", "2001:db8:bad::1"), 403);
    assert_eq!(send("/any", "198.51.100.7"), 200);
    // the route's allow list, v4 and v6; deny wins inside it
    assert_eq!(send("/partners/x", "198.51.100.7"), 200);
    assert_eq!(send("/partners/x", "2001:db8:1::5"), 200);
    assert_eq!(send("/partners/x", "198.51.100.66"), 403);
    assert_eq!(send("/partners/x", "192.0.2.1"), 403);
    assert_eq!(
        send("/partners/x", ""),
        403,
        "the trusted peer itself is not a partner"
    );
    // walked from the right: a spoofed leftmost entry does not help ...
    assert_eq!(send("/partners/x", "198.51.100.7, 6.6.6.6"), 403);
    // ... and does not hurt; trusted hops are skipped
    assert_eq!(send("/partners/x", "6.6.6.6, 198.51.100.7, 10.1.1.1"), 200);
    assert_eq!(send("/any", "203.0.113.9, 198.51.100.7"), 200);
    assert_eq!(up.request_count(), 5);
    // Denials are counted per filter and audited (audit goes to stderr).
    let m = scrape(&gw);
    let denials = "ringgate_ip_filter_denials_total";
    assert_eq!(
        m.sum(denials, &[("route", "(unmatched)")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum(denials, &[("route", "partners")]), 4.0);
    let last = gw.wait_log(r#""client_ip":"6.6.6.6""#);
    assert!(
        last.contains(r#""event":"ip_denied""#) && last.contains(r#""filter":"route""#),
        "{last}"
    );
    assert_eq!(gw.count_log(r#""event":"ip_denied""#), 6);
    drop(gw);

    // Without trusted proxies X-Forwarded-For changes nothing.
    let untrusted = routes.replace("trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]", "");
    let gw = Gateway::start(&config("io_uring", &untrusted));
    let mut c = Client::connect(gw.main());
    for xff in ["198.51.100.7", "2001:db8:1::5"] {
        let r = c.request(&format!(
            "GET /partners/x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\n\r\n"
        ));
        assert_json_error(&r, 403);
    }
    let r = c.request("GET /any HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.5\r\n\r\n");
    assert_eq!(
        r.status, 200,
        "a spoofed address cannot get a client denied either"
    );
}

#[test]
fn block_list_file_of_100k_entries_loads_and_reloads_on_change() {
    let up = Upstream::named("up");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("blocked.txt");
    let write_list = |extra: &str| {
        let tmp = dir.path().join("blocked.tmp");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        writeln!(f, "# generated block list").unwrap();
        for i in 0..100_000u32 {
            let [_, a, b, c] = (0x0a00_0000u32 + i * 3).to_be_bytes();
            writeln!(f, "10.{a}.{b}.{c}  # entry {i}").unwrap();
        }
        writeln!(f, "2001:db8::/32\n{extra}").unwrap();
        drop(f);
        // Replaced in one step, as operators' tooling should.
        std::fs::rename(&tmp, &list).unwrap();
    };
    write_list("");
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "[security]\nlist_watch_interval = \"50ms\"\n[security.ip_filter]\ndeny_files = [\"{}\"]\n\n{}{}",
            list.display(),
            cluster("c", &[&up], ""),
            route_all("c")
        ),
    ));
    assert_eq!(get(gw.main(), "/").status, 200);

    write_list("127.0.0.0/8");
    gw.wait_log("config reloaded");
    assert_json_error(&get(gw.main(), "/"), 403);
    assert_eq!(up.request_count(), 1);
    assert!(gw.count_log("a watched file (IP list, certificate) changed") >= 1);

    // A broken list is refused with file and line; the old list keeps serving.
    std::fs::write(dir.path().join("bad.tmp"), "10.0.0.1\nnot-an-address\n").unwrap();
    std::fs::rename(dir.path().join("bad.tmp"), &list).unwrap();
    let line = gw.wait_log("blocked.txt:2:");
    assert!(line.contains("not an IP address"), "{line}");
    gw.wait_log("config reload refused");
    assert_json_error(&get(gw.main(), "/"), 403);
}

#[test]
fn security_headers_by_default_and_per_route() {
    let up = Upstream::with(|r| {
        let mut headers = vec![
            ("Server", "Apache/2.4.1"),
            ("X-Powered-By", "PHP/8"),
            ("X-Debug", "internal"),
        ];
        if r.target.starts_with("/own") {
            headers.push(("X-Frame-Options", "SAMEORIGIN"));
        }
        Reply::status(200, &headers, "ok")
    });
    let body = format!(
        "{}
[[routes]]
name = \"custom\"
match = {{ segment_prefix = \"/custom\" }}
proxy = {{ cluster = \"c\" }}
response_headers = {{ set = {{ \"x-frame-options\" = \"SAMEORIGIN\", \"cache-control\" = \"no-store\" }}, remove = [\"x-debug\"], keep = [\"server\"] }}

[[routes]]
name = \"plain\"
match = {{ segment_prefix = \"/plain\" }}
proxy = {{ cluster = \"c\" }}
response_headers = {{ defaults = false }}

[[routes]]
name = \"default\"
proxy = {{ cluster = \"c\" }}
",
        cluster("c", &[&up], "")
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let mut c = Client::connect(gw.main());

    let r = c.get("/x");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-debug"), Some("internal"));

    // An upstream's own value of a default field wins over the default.
    let r = c.get("/own");
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        r.headers
            .iter()
            .filter(|(n, _)| n == "x-frame-options")
            .count(),
        1
    );

    let r = c.get("/custom/a");
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("server"), Some("Apache/2.4.1"));
    assert_eq!(r.header("x-debug"), None);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    let r = c.get("/plain/a");
    assert_eq!(r.header("content-security-policy"), None);
    assert_eq!(
        r.header("server"),
        None,
        "removal is separate from the default set"
    );

    // Responses the gateway makes itself carry the defaults too.
    let r = c.get("/a%00");
    assert_json_error(&r, 400);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[test]
fn cors_preflight_answered_and_origins_never_reflected_blindly() {
    let up = Upstream::named("api");
    let body = format!(
        "{}
[[routes]]
name = \"api\"
match = {{ segment_prefix = \"/api\", methods = [\"GET\", \"POST\"] }}
proxy = {{ cluster = \"c\" }}
[routes.cors]
allow_origins = [\"https://app.example.com\", \"https://*.example.org\"]
allow_methods = [\"GET\", \"POST\"]
allow_headers = [\"x-token\"]
expose_headers = [\"x-request-id\"]
allow_credentials = true
max_age = \"10m\"
",
        cluster("c", &[&up], "")
    );
    let gw = Gateway::start(&config("epoll", &body));
    let mut c = Client::connect(gw.main());
    let preflight = |origin: &str, method: &str, headers: &str| {
        format!(
            "OPTIONS /api/items HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: {method}\r\n\
             Access-Control-Request-Headers: {headers}\r\n\r\n"
        )
    };

    let r = c.request(&preflight(
        "https://app.example.com",
        "POST",
        "x-token, content-type",
    ));
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = c.request(&preflight("https://eu.shop.example.org", "GET", "x-token"));
    assert_eq!(r.status, 204);

    for (origin, method, headers) in [
        ("https://evil.example.net", "POST", "x-token"),
        ("https://example.org", "GET", "x-token"),
        ("https://app.example.com.evil.net", "GET", "x-token"),
        ("https://app.example.com", "POST", "x-secret"),
        ("null", "GET", "x-token"),
    ] {
        let r = c.request(&preflight(origin, method, headers));
        assert_json_error(&r, 403);
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    // A method the route does not serve is no route at all.
    assert_eq!(
        c.request(&preflight("https://app.example.com", "DELETE", ""))
            .status,
        404
    );
    assert_eq!(up.request_count(), 0, "preflights never reach the upstream");

    let r =
        c.request("GET /api/items HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example.com\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    let r =
        c.request("GET /api/items HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example.net\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);

    // `*` with credentials is refused at load, naming the key.
    let bad = body.replace(
        "\"https://app.example.com\", \"https://*.example.org\"",
        "\"*\"",
    );
    let err = Gateway::try_start(&config("epoll", &bad))
        .err()
        .expect("refused");
    assert!(
        err.contains("routes[0].cors") && err.contains("credentials"),
        "{err}"
    );
}

#[test]
fn validation_rules_refuse_before_the_upstream() {
    let up = Upstream::named("ok");
    let body = format!(
        "{}
[[routes]]
name = \"items\"
match = {{ segment_prefix = \"/items\" }}
proxy = {{ cluster = \"c\" }}
[routes.validate]
methods = [\"GET\", \"POST\"]
required_headers = [\"x-tenant\"]
content_types = [\"application/json\"]
max_uri_bytes = 64
max_query_params = 3
max_headers = 6
query = [{{ name = \"page\", pattern = \"[0-9]+\", max_length = 3 }}, {{ name = \"q\", required = true }}]
",
        cluster("c", &[&up], "")
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let mut c = Client::connect(gw.main());
    let req = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: t\r\nX-Tenant: a\r\n{extra}\r\n")
    };

    let r = c.request(&req("DELETE", "/items?q=1", ""));
    assert_json_error(&r, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_json_error(
        &c.request("GET /items?q=1 HTTP/1.1\r\nHost: t\r\n\r\n"),
        400,
    );
    assert_json_error(
        &c.request(&req(
            "POST",
            "/items?q=1",
            "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        )),
        415,
    );
    // a refused body closes the connection: start a new one
    let mut c = Client::connect(gw.main());
    assert_json_error(
        &c.request(&req("GET", &format!("/items?q={}", "a".repeat(60)), "")),
        414,
    );
    assert_json_error(&c.request(&req("GET", "/items?q=1&a=1&b=2&c=3", "")), 414);
    assert_json_error(
        &c.request(&req(
            "GET",
            "/items?q=1",
            "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n",
        )),
        431,
    );
    assert_json_error(&c.request(&req("GET", "/items?q=1&page=abc", "")), 400);
    assert_json_error(&c.request(&req("GET", "/items?q=1&page=1234", "")), 400);
    assert_json_error(&c.request(&req("GET", "/items?page=1", "")), 400);
    let r = c.request(&req("GET", "/items?q=secret-value&page=abc", ""));
    // The request id is hex and may hold "abc" itself.
    let body = r.text().replace(r.header("x-request-id").unwrap(), "");
    assert!(
        !body.contains("secret-value") && !body.contains("abc"),
        "{body}"
    );
    assert_eq!(
        up.request_count(),
        0,
        "nothing refused reached the upstream"
    );

    assert_eq!(
        c.request(&req("GET", "/items?q=a+b&page=12", "")).status,
        200
    );
    let r = c.request(&req(
        "POST",
        "/items?q=%C3%A9",
        "Content-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}",
    ));
    assert_eq!(r.status, 200);
    assert_eq!(up.wait_requests(2).len(), 2);
}

#[test]
fn proxy_protocol_listener_takes_the_client_from_the_header() {
    for driver in DRIVERS {
        let up = Upstream::named("up");
        let body = format!(
            "proxy_protocol = true\n\n{}
[[routes]]
name = \"partners\"
proxy = {{ cluster = \"c\" }}
ip_filter = {{ allow = [\"198.51.100.0/24\", \"2001:db8:1::/48\"] }}
",
            cluster("c", &[&up], "")
        );
        let gw = Gateway::start(&config(driver, &body));
        let get_req = "GET /x HTTP/1.1\r\nHost: t\r\n\r\n";

        // v1, allowed source; the header and the request in one segment
        let mut c = Client::connect(gw.main());
        c.send(format!("PROXY TCP4 198.51.100.7 10.0.0.1 51234 443\r\n{get_req}").as_bytes());
        assert_eq!(c.read_response().status, 200);
        // later requests on the connection keep the header's address
        assert_eq!(c.request(get_req).status, 200);
        let reqs = up.wait_requests(2);
        assert!(reqs[0]
            .header("x-forwarded-for")
            .unwrap()
            .ends_with("198.51.100.7"));

        // v2 (binary), IPv6 source, header sent separately from the request
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
        v2.extend_from_slice(
            &"2001:db8:1::9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v2.extend_from_slice(&[0u8; 16]);
        v2.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
        let mut c = Client::connect(gw.main());
        c.send(&v2);
        assert_eq!(c.request(get_req).status, 200);

        // an address outside the allow list
        let mut c = Client::connect(gw.main());
        c.send(b"PROXY TCP4 203.0.113.1 10.0.0.1 1 2\r\n");
        assert_json_error(&c.request(get_req), 403);

        // no header, or a broken one: closed unanswered
        for raw in [get_req.as_bytes(), b"PROXY TCP4 1.2.3.4\r\n"] {
            let mut c = Client::connect(gw.main());
            c.send(raw);
            assert!(c.read_response_to(false).is_none());
            assert!(c.is_closed());
        }
        assert_eq!(up.request_count(), 3);
    }
}

#[test]
fn json_bodies_are_checked_against_the_route_schema() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("item.json");
    std::fs::write(
        &schema,
        r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name", "price"],
  "properties": {
    "name": { "type": "string", "maxLength": 20 },
    "price": { "type": "number", "minimum": 0 },
    "tags": { "type": "array", "items": { "type": "string" } }
  },
  "additionalProperties": false
}"#,
    )
    .unwrap();
    for driver in DRIVERS {
        let up = Upstream::named("stored");
        let body = format!(
            "{}
    [[routes]]
    name = \"items\"
    match = {{ segment_prefix = \"/items\" }}
    proxy = {{ cluster = \"c\" }}
    max_body_bytes = \"1KiB\"
    validate = {{ json_schema = \"{}\" }}
    ",
            cluster("c", &[&up], ""),
            schema.display()
        );
        let gw = Gateway::start(&config(driver, &body));
        let post = |json: &str| {
            format!(
                "POST /items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                json.len()
            )
        };
        let mut c = Client::connect(gw.main());
        let good = r#"{"name":"lamp","price":12.5,"tags":["home"]}"#;
        assert_eq!(c.request(&post(good)).status, 200);

        // malformed: where parsing stopped
        let r = c.request(&post("{\"name\": \"lamp\",\n \"price\": }"));
        assert_json_error_prefix(&r, 400);
        assert!(
            r.text().contains(r#","line":2,"column":11}"#),
            "{}",
            r.text()
        );

        // schema violations: the location and keyword, never the value
        let r = c.request(&post(r#"{"name":"SECRETVALUE-IS-FAR-TOO-LONG","price":1}"#));
        assert_json_error_prefix(&r, 400);
        assert!(
            r.text()
                .contains(r#""location":"/name","keyword":"maxLength""#),
            "{}",
            r.text()
        );
        assert!(!r.text().contains("SECRETVALUE"));
        let r = c.request(&post(r#"{"name":"x","price":-5}"#));
        assert!(
            r.text()
                .contains(r#""location":"/price","keyword":"minimum""#),
            "{}",
            r.text()
        );
        let r = c.request(&post(r#"{"name":"x"}"#));
        assert!(r.text().contains(r#""keyword":"required""#), "{}", r.text());
        let r = c.request(&post(r#"{"name":"x","price":1,"admin":true}"#));
        assert!(
            r.text().contains(r#""keyword":"additionalProperties""#),
            "{}",
            r.text()
        );
        // no body at all is not JSON
        let r = c.request("POST /items HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        assert_json_error_prefix(&r, 400);

        // a chunked valid body goes upstream with a Content-Length
        let chunked = "POST /items HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
                       a\r\n{\"name\":\"l\r\nf\r\namp\",\"price\":3}\r\n0\r\n\r\n";
        assert_eq!(
            c.request(chunked).status,
            200,
            "the connection survived the 400s"
        );

        // over the route's body limit
        let big = format!(
            r#"{{"name":"x","price":1,"tags":["{}"]}}"#,
            "a".repeat(2000)
        );
        let r = request(gw.main(), &post(&big));
        assert_json_error(&r, 413);

        let reqs = up.wait_requests(2);
        assert_eq!(reqs.len(), 2, "only valid bodies reached the upstream");
        assert_eq!(reqs[0].body, good.as_bytes());
        assert_eq!(reqs[1].body, br#"{"name":"lamp","price":3}"#);
        assert_eq!(reqs[1].header("content-length"), Some("25"));
        assert!(!reqs[1].chunked);
    }
}

/// A gateway JSON error whose body has extra fields after the request id.
fn assert_json_error_prefix(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert_eq!(v["status"], status);
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"));
}

#[test]
fn openapi_operation_rules_are_enforced() {
    let up = Upstream::named("created");
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("shop.yaml");
    std::fs::write(
        &doc,
        r#"openapi: 3.1.0
info: { title: shop, version: "1" }
paths:
  /items:
    post:
      operationId: createItem
      parameters:
        - { name: X-Tenant, in: header, required: true, schema: { type: string, pattern: "^[a-z]+$" } }
        - { name: page, in: query, schema: { type: integer, minimum: 1 } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: '#/components/schemas/Item' }
components:
  schemas:
    Item:
      type: object
      required: [name, price]
      properties:
        name: { type: string }
        price: { type: number, minimum: 0 }
"#,
    )
    .unwrap();
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "{}
[[routes]]
name = \"items\"
match = {{ path = \"/items\" }}
proxy = {{ cluster = \"c\" }}
validate = {{ openapi = {{ document = \"{}\", operation = \"createItem\" }} }}
",
            cluster("c", &[&up], ""),
            doc.display()
        ),
    ));
    // Refused before the body is read: each on its own connection.
    let addr = gw.main();
    let post = |target: &str, headers: &str, json: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
    };
    let good = r#"{"name":"lamp","price":3}"#;
    let tenant = "X-Tenant: acme\r\n";
    assert_json_error(&request(addr, &post("/items", "", good)), 400);
    assert_json_error(
        &request(addr, &post("/items", "X-Tenant: ACME\r\n", good)),
        400,
    );
    assert_json_error(&request(addr, &post("/items?page=0", tenant, good)), 400);
    assert_json_error(&request(addr, &post("/items?page=two", tenant, good)), 400);
    let r = request(
        addr,
        &post("/items", tenant, r#"{"name":"lamp","price":-1}"#),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains(r#""location":"/price","keyword":"minimum""#),
        "{}",
        r.text()
    );
    let r = request(addr, "POST /items HTTP/1.1\r\nHost: t\r\nX-Tenant: acme\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
    assert_json_error(&r, 415);
    assert_eq!(up.request_count(), 0);
    assert_eq!(
        request(addr, &post("/items?page=2", tenant, good)).status,
        200
    );
    assert_eq!(up.wait_requests(1)[0].body, good.as_bytes());

    // A missing operation is a config error naming the key.
    let bad = format!(
        "{}[[routes]]\nname = \"x\"\nproxy = {{ cluster = \"c\" }}\nvalidate = {{ openapi = {{ document = \"{}\", operation = \"nope\" }} }}\n",
        cluster("c", &[&up], ""),
        doc.display()
    );
    let err = Gateway::try_start(&config("io_uring", &bad))
        .err()
        .expect("refused");
    assert!(
        err.contains("routes[0].validate.openapi") && err.contains("nope"),
        "{err}"
    );
}

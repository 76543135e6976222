use super::*;
use crate::config::Config;
use crate::http::head::{parse_request, HeadLimits, RequestHead};

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4096,
    max_header_bytes: 8192,
    max_headers: 32,
};

fn router(routes: &str) -> Router {
    let text = format!(
        "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n{routes}"
    );
    Config::parse("test.toml", &text)
        .unwrap_or_else(|e| panic!("{e}"))
        .router
}

fn route_name(r: &Router, raw: &str) -> Option<String> {
    let mut head = RequestHead::default();
    parse_request(raw.as_bytes(), &LIMITS, &mut head).unwrap();
    r.find(&RequestView {
        head: &head,
        buf: raw.as_bytes(),
    })
    .map(|r| r.name.to_string())
}

fn get(r: &Router, host: &str, path: &str) -> Option<String> {
    route_name(r, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
}

const TABLE: &str = r#"
[[routes]]
name = "catch-all"
proxy = { cluster = "c" }

[[routes]]
name = "api-prefix"
match = { segment_prefix = "/api" }
proxy = { cluster = "c" }

[[routes]]
name = "api-v1"
match = { segment_prefix = "/api/v1" }
proxy = { cluster = "c" }

[[routes]]
name = "api-exact"
match = { path = "/api/status" }
proxy = { cluster = "c" }

[[routes]]
name = "plain-prefix"
match = { prefix = "/static" }
proxy = { cluster = "c" }

[[routes]]
name = "wild"
match = { host = "*.example.com" }
proxy = { cluster = "c" }

[[routes]]
name = "deep-wild"
match = { host = "*.eu.example.com" }
proxy = { cluster = "c" }

[[routes]]
name = "exact-host"
match = { host = "api.example.com", segment_prefix = "/api" }
proxy = { cluster = "c" }

[[routes]]
name = "post-only"
match = { path = "/submit", methods = ["POST"] }
proxy = { cluster = "c" }

[[routes]]
name = "submit-any"
match = { path = "/submit" }
proxy = { cluster = "c" }

[[routes]]
name = "canary"
match = { path = "/submit", headers = [{ name = "X-Canary", value = "1" }] }
proxy = { cluster = "c" }
"#;

#[test]
fn most_specific_path_wins_whatever_the_order() {
    let r = router(TABLE);
    assert_eq!(get(&r, "x.org", "/api").as_deref(), Some("api-prefix"));
    assert_eq!(
        get(&r, "x.org", "/api/users").as_deref(),
        Some("api-prefix")
    );
    assert_eq!(get(&r, "x.org", "/api/v1/users").as_deref(), Some("api-v1"));
    assert_eq!(
        get(&r, "x.org", "/api/status").as_deref(),
        Some("api-exact")
    );
    assert_eq!(
        get(&r, "x.org", "/apix").as_deref(),
        Some("catch-all"),
        "segment-aware"
    );
    assert_eq!(
        get(&r, "x.org", "/staticfoo").as_deref(),
        Some("plain-prefix"),
        "plain prefix is bytewise"
    );
}

#[test]
fn host_tiers() {
    let r = router(TABLE);
    assert_eq!(
        get(&r, "API.Example.com:8080", "/api/x").as_deref(),
        Some("exact-host")
    );
    assert_eq!(
        get(&r, "api.example.com", "/other").as_deref(),
        Some("wild"),
        "falls to the wildcard tier"
    );
    assert_eq!(
        get(&r, "a.eu.example.com", "/").as_deref(),
        Some("deep-wild"),
        "longer suffix first"
    );
    assert_eq!(get(&r, "www.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(
        get(&r, "example.com", "/").as_deref(),
        Some("catch-all"),
        "wildcard needs a label"
    );
}

#[test]
fn methods_and_headers() {
    let r = router(TABLE);
    let post = "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(route_name(&r, post).as_deref(), Some("post-only"));
    assert_eq!(get(&r, "x", "/submit").as_deref(), Some("submit-any"));
    let canary = "POST /submit HTTP/1.1\r\nHost: x\r\nx-canary: 1\r\n\r\n";
    assert_eq!(
        route_name(&r, canary).as_deref(),
        Some("canary"),
        "more header conditions first"
    );
    let not_canary = "GET /submit HTTP/1.1\r\nHost: x\r\nx-canary: 2\r\n\r\n";
    assert_eq!(route_name(&r, not_canary).as_deref(), Some("submit-any"));
}

#[test]
fn no_match_is_none() {
    let r = router(
        "[[routes]]\nname = \"only\"\nmatch = { path = \"/only\" }\nproxy = { cluster = \"c\" }\n",
    );
    assert_eq!(get(&r, "x", "/other"), None);
}

#[test]
fn thousand_routes_resolve() {
    let mut routes = String::new();
    for i in 0..1000 {
        routes.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nmatch = {{ host = \"h{}.example.com\", segment_prefix = \"/p{i}\" }}\nproxy = {{ cluster = \"c\" }}\n",
            i % 10
        ));
    }
    let r = router(&routes);
    assert_eq!(
        get(&r, "h7.example.com", "/p977/x").as_deref(),
        Some("r977")
    );
    assert_eq!(get(&r, "h7.example.com", "/p978/x"), None);
}

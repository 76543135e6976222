use crate::config::Config;

const BASE: &str = "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n";

fn errors(text: &str) -> Vec<String> {
    match Config::parse("gw.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_are_documented_values() {
    let c = Config::parse("gw.toml", BASE).unwrap();
    assert_eq!(
        c.timeouts.request_head,
        crate::config::defaults::REQUEST_HEAD
    );
    assert_eq!(
        c.limits.max_body_bytes,
        crate::config::defaults::MAX_BODY_BYTES
    );
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert!(c.workers >= 1);
}

/// Batched waits are on by default but gated on the worker's load; the
/// gate's percentage is bounded and named where it stands.
#[test]
fn wait_batching_defaults_and_bounds() {
    let c = Config::parse("gw.toml", BASE).unwrap();
    assert_eq!(
        (c.io_uring_wait_batch, c.io_uring_wait_batch_busy_percent),
        (64, 70)
    );
    let e = errors(&format!(
        "{BASE}[server]\nio_uring_wait_batch_busy_percent = 101\n"
    ));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("gw.toml:5:36: server.io_uring_wait_batch_busy_percent:")
            && e[0].contains("between 0 (always batch) and 100"),
        "{}",
        e[0]
    );
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = format!("{BASE}\n[timeouts]\nrequest_head = \"5s\"\nrequest_haed = \"5s\"\n");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("gw.toml:7:1: timeouts.request_haed: unknown field"),
        "{}",
        e[0]
    );
}

#[test]
fn bad_duration_names_its_key() {
    let e = errors(&format!(
        "{BASE}[timeouts]\nupstream_connect = \"3 parsecs\"\n"
    ));
    assert!(
        e[0].starts_with("gw.toml:5:20: timeouts.upstream_connect:"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("no valid unit"), "{}", e[0]);
}

#[test]
fn every_validation_error_is_reported_with_its_location() {
    let text = format!(
        r#"{BASE}
[[clusters]]
name = "api"
endpoints = []

[[routes]]
name = "a"
match = {{ path = "no-slash" }}
proxy = {{ cluster = "missing" }}

[[routes]]
name = "b"
match = {{ methods = ["FETCH"] }}
respond = {{ status = 99 }}
"#
    );
    let e = errors(&text);
    let expected = [
        "gw.toml:7:13: clusters[0].endpoints: a cluster needs at least one endpoint",
        "gw.toml:11:18: routes[0].match.path:",
        "gw.toml:12:21: routes[0].proxy.cluster: no cluster named \"missing\"",
        "gw.toml:16:22: routes[1].match.methods[0]: \"FETCH\" is not an HTTP method",
        "gw.toml:17:22: routes[1].respond.status: 99 is not a final status",
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
}

#[test]
fn duplicate_names_and_bad_addresses() {
    let text = format!(
        "{BASE}[[listeners]]\nname = \"l\"\naddress = \"localhost:80\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:2\"]\n"
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|d| d.contains("listeners[1].name: duplicate listener name")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|d| d.contains("listeners[1].address: \"localhost:80\" is not an IP:port")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|d| d.contains("clusters[1].name: duplicate cluster name")),
        "{e:#?}"
    );
}

#[test]
fn syntax_error_has_a_position() {
    let e = errors("[[listeners]\nname = 1\n");
    assert!(e[0].starts_with("gw.toml:1:"), "{}", e[0]);
}

#[test]
fn route_needs_one_action_and_rewrite_needs_a_prefix() {
    let text = format!(
        "{BASE}[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\n[[routes]]\nname = \"s\"\nmatch = {{ path = \"/x\" }}\nproxy = {{ cluster = \"c\", rewrite_prefix = \"/y\" }}\n"
    );
    let e = errors(&text);
    assert!(
        e.iter()
            .any(|d| d.contains("routes[0]: a route needs exactly one of")),
        "{e:#?}"
    );
    assert!(
        e.iter()
            .any(|d| d.contains("routes[1].proxy.rewrite_prefix: needs match.prefix")),
        "{e:#?}"
    );
}

#[test]
fn redis_store_keys_are_checked_where_they_stand() {
    let text = format!(
        "{BASE}[rate_limit.redis]\nurl = \"redis://:pw@127.0.0.1:6379\"\nfailure = \"maybe\"\ntimeout = \"0s\"\nkey_prefix = \"a b\"\n"
    );
    let e = errors(&text);
    let expected = [
        "gw.toml:6:11: rate_limit.redis.failure: must be \"open\" or \"closed\"",
        "gw.toml:7:11: rate_limit.redis.timeout: must be between 1ms and 10s",
        "gw.toml:8:14: rate_limit.redis.key_prefix:",
    ];
    assert_eq!(e.len(), expected.len(), "{e:#?}");
    for (got, want) in e.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}\nwant {want:?}");
    }
    let ok = format!("{BASE}[rate_limit.redis]\nurl = \"unix:///run/redis.sock\"\n");
    let c = Config::parse("gw.toml", &ok).unwrap();
    let store = c.rate_limit.redis.unwrap();
    assert_eq!(store.failure, crate::ratelimit::cluster::Failure::Open);
    assert_eq!(store.key_prefix, "ringgate:rl:");
}

#[test]
fn introspection_endpoints_are_checked_and_named_by_routes() {
    let text = format!(
        r#"{BASE}
[[auth.introspection]]
name = "idp"
url = "ftp://idp/introspect"
client_id = "gw"
client_secret_file = "/nonexistent/secret"

[[routes]]
name = "r"
respond = {{ status = 200 }}
auth = {{ methods = ["introspection:other"] }}
"#
    );
    let e = errors(&text).join("\n");
    assert!(
        e.contains("auth.introspection[0].url: must be an http"),
        "{e}"
    );
    assert!(
        e.contains("auth.introspection[0].client_secret_file: /nonexistent/secret"),
        "{e}"
    );
    assert!(e.contains("routes[0].auth.methods[0]"), "{e}");
}

#[test]
fn redirect_listeners_need_known_hosts_and_a_redirect_status() {
    let plain =
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[listeners.redirect_https]\n";
    let e = errors(&format!("{BASE}{plain}"));
    assert!(
        e[0].starts_with("gw.toml:")
            && e[0].contains("listeners[1].redirect_https.hosts: no host name"),
        "{e:?}"
    );
    let e = errors(&format!(
        "{BASE}{plain}status = 302\nhosts = [\"a.test\", \"bad host\"]\n"
    ));
    assert!(
        e.iter()
            .any(|l| l.contains("redirect_https.status: 302 is not 308 or 301")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("redirect_https.hosts[1]: \"bad host\"")),
        "{e:?}"
    );

    // Route hosts are known names.
    let routed = format!(
        "{BASE}{plain}\n[[routes]]\nname = \"r\"\nmatch = {{ host = \"API.test\" }}\nrespond = {{ status = 200 }}\n"
    );
    let c = Config::parse("gw.toml", &routed).unwrap();
    assert!(c.listeners[1].redirect.is_some());
    assert!(c.listeners[0].redirect.is_none());
}

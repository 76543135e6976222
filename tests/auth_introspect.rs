//! OAuth2 token introspection (RFC 7662) on the real binary: a test
//! authorization server on loopback answers for opaque tokens; the gateway
//! authenticates with its client credentials, honours `active`, `exp` and
//! `scope`, caches answers per worker (active and inactive), and answers
//! 503 when the endpoint is down or too slow.

use crate::common::*;
use base64::Engine as _;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The form field `name` of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// The authorization server: checks the gateway's client credentials,
/// then answers by token.
fn authorization_server() -> Upstream {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("gateway:intro%26secret")
    );
    Upstream::with(move |r| {
        if r.method != "POST" || r.target != "/introspect" {
            return Reply::status(404, &[], "");
        }
        if r.header("authorization") != Some(basic.as_str()) {
            return Reply::status(401, &[], r#"{"error":"invalid_client"}"#);
        }
        if form_field(&r.body, "token_type_hint").as_deref() != Some("access_token") {
            return Reply::status(400, &[], r#"{"error":"invalid_request"}"#);
        }
        let now = unix_now();
        let answer = match form_field(&r.body, "token").as_deref() {
            Some("tok-alice") => format!(
                r#"{{"active":true,"sub":"alice","scope":"orders:read orders:write","client_id":"shop","exp":{}}}"#,
                now + 600
            ),
            Some("tok-narrow") => format!(
                r#"{{"active":true,"sub":"bob","scope":"profile","exp":{}}}"#,
                now + 600
            ),
            Some("tok-service") => format!(
                r#"{{"active":true,"client_id":"batch","scope":"orders:read","exp":{}}}"#,
                now + 600
            ),
            Some("tok-expired") => format!(
                r#"{{"active":true,"sub":"carol","scope":"orders:read","exp":{}}}"#,
                now - 10
            ),
            Some("tok-slow") => return Reply::Hang,
            Some("tok-broken") => return Reply::status(500, &[], "oops"),
            _ => r#"{"active":false}"#.to_string(),
        };
        Reply::status(200, &[("content-type", "application/json")], &answer)
    })
}

fn gateway(idp: std::net::SocketAddr, up: &Upstream, dir: &std::path::Path) -> Gateway {
    let secret = dir.join("introspection.secret");
    std::fs::write(&secret, "intro&secret\n").unwrap();
    Gateway::start(&config(
        "io_uring",
        &format!(
            r#"[[auth.introspection]]
name = "idp"
url = "http://{idp}/introspect"
client_id = "gateway"
client_secret_file = "{secret}"
timeout = "300ms"
negative_ttl = "1h"

[[auth.introspection]]
name = "uncached"
url = "http://{idp}/introspect"
client_id = "gateway"
client_secret_file = "{secret}"
cache_max_ttl = "0s"

{cluster}
[[routes]]
name = "orders"
match = {{ path = "/orders" }}
proxy = {{ cluster = "c" }}
auth = {{ methods = ["introspection:idp"], scopes = ["orders:read"], forward = {{ "x-user" = "subject", "x-scopes" = "scopes" }} }}

[[routes]]
name = "uncached"
match = {{ path = "/uncached" }}
proxy = {{ cluster = "c" }}
auth = {{ methods = ["introspection:uncached"] }}
"#,
            secret = secret.display(),
            cluster = cluster("c", &[up], ""),
        ),
    ))
}

fn get_with(c: &mut Client, path: &str, token: &str) -> Response {
    c.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nX-User: spoofed\r\n\r\n"
    ))
}

fn calls(gw: &Gateway, result: &str) -> f64 {
    scrape(gw).sum(
        "ringgate_auth_introspections_total",
        &[("endpoint", "idp"), ("result", result)],
    )
}

#[test]
fn active_inactive_and_unallowed_tokens_with_cached_answers() {
    let dir = tempfile::tempdir().unwrap();
    let idp = authorization_server();
    let up = Upstream::named("ok");
    let gw = gateway(idp.addr, &up, dir.path());
    // One connection: one worker, one cache.
    let mut c = Client::connect(gw.main());

    let r = get_with(&mut c, "/orders", "tok-alice");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header("x-user"), Some("alice"));
    assert_eq!(seen[0].header_count("x-user"), 1);
    assert_eq!(seen[0].header("x-scopes"), Some("orders:read orders:write"));
    assert_eq!(seen[0].header("authorization"), None);
    assert_eq!(idp.request_count(), 1);

    // The second use is answered from the cache.
    assert_eq!(get_with(&mut c, "/orders", "tok-alice").status, 200);
    assert_eq!(idp.request_count(), 1);

    // A token of a client with no user: the client is the subject.
    assert_eq!(get_with(&mut c, "/orders", "tok-service").status, 200);
    assert_eq!(up.wait_requests(3)[2].header("x-user"), Some("batch"));

    // Inactive: 401 invalid_token, and the answer is cached too.
    for _ in 0..2 {
        let r = get_with(&mut c, "/orders", "tok-unknown");
        assert_json_error(&r, 401);
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    assert_eq!(idp.request_count(), 3);

    // Active per the server but past its exp: refused.
    assert_json_error(&get_with(&mut c, "/orders", "tok-expired"), 401);
    // Active without the route's scope: 403.
    let r = get_with(&mut c, "/orders", "tok-narrow");
    assert_json_error(&r, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    // Not a b64token: refused without asking the server.
    let before = idp.request_count();
    assert_json_error(&get_with(&mut c, "/orders", "tok\"alice"), 401);
    assert_eq!(idp.request_count(), before);
    assert_eq!(
        up.request_count(),
        3,
        "refused requests reached the upstream"
    );

    // cache_max_ttl = 0: every request asks again.
    let before = idp.request_count();
    assert_eq!(get_with(&mut c, "/uncached", "tok-alice").status, 200);
    assert_eq!(get_with(&mut c, "/uncached", "tok-alice").status, 200);
    assert_eq!(idp.request_count(), before + 2);

    assert_eq!(calls(&gw, "active"), 3.0);
    // tok-unknown, and tok-expired (active per the server, past its exp)
    assert_eq!(calls(&gw, "inactive"), 2.0);
    let log = gw.log_text();
    assert!(!log.contains("tok-alice") && !log.contains("intro&secret"));
}

#[test]
fn a_down_slow_or_failing_endpoint_gives_503() {
    let dir = tempfile::tempdir().unwrap();
    let idp = authorization_server();
    let up = Upstream::named("ok");
    let gw = gateway(Upstream::refused_addr(), &up, dir.path());
    let mut c = Client::connect(gw.main());
    let r = get_with(&mut c, "/orders", "tok-alice");
    assert_json_error(&r, 503);
    assert!(r.text().contains("authentication unavailable"));
    gw.wait_log("introspection_unreachable");
    drop(gw);

    let gw = gateway(idp.addr, &up, dir.path());
    let mut c = Client::connect(gw.main());
    // Slower than the 300 ms timeout, then a 500: neither is cached.
    for token in ["tok-slow", "tok-broken", "tok-broken"] {
        assert_json_error(&get_with(&mut c, "/orders", token), 503);
    }
    assert_eq!(calls(&gw, "error"), 3.0);
    // The connection is still usable and a good token still passes.
    assert_eq!(get_with(&mut c, "/orders", "tok-alice").status, 200);
    assert_eq!(up.request_count(), 1);
}

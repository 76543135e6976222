//! Remote signing keys on the real binary: a test OIDC provider on
//! loopback serves a discovery document and a JWKS; the gateway loads the
//! keys before it reports ready, picks up a rotation when a token names a
//! new `kid` (without a restart), and keeps verifying with the last good
//! keys when the provider goes down.

use std::sync::{Arc, Mutex};

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn token(key_file: &str, kid: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(key_file)).unwrap()).unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": "https://idp.test", "sub": sub, "exp": now + 600}),
        &key,
    )
    .unwrap()
}

/// What the provider answers: the JWKS document, or 503 when `None`.
type Served = Arc<Mutex<Option<String>>>;

fn provider(served: &Served) -> (Upstream, Arc<Mutex<String>>) {
    let base: Arc<Mutex<String>> = Arc::default();
    let (b, s) = (base.clone(), served.clone());
    let up = Upstream::with(move |r| {
        let jwks = s.lock().unwrap().clone();
        match (r.target.as_str(), jwks) {
            (_, None) => Reply::status(503, &[], "down"),
            ("/.well-known/openid-configuration", Some(_)) => Reply::status(
                200,
                &[("content-type", "application/json")],
                &json!({
                    "issuer": "https://idp.test",
                    "jwks_uri": format!("{}/keys", b.lock().unwrap()),
                })
                .to_string(),
            ),
            ("/keys", Some(doc)) => Reply::status(
                200,
                &[
                    ("content-type", "application/json"),
                    ("cache-control", "max-age=3600"),
                ],
                &doc,
            ),
            _ => Reply::status(404, &[], ""),
        }
    });
    *base.lock().unwrap() = format!("http://{}", up.addr);
    (up, base)
}

fn fetches(gw: &Gateway, result: &str) -> f64 {
    scrape(gw).sum(
        "ringgate_auth_jwks_fetches_total",
        &[("issuer", "idp"), ("result", result)],
    )
}

#[test]
fn discovered_keys_rotate_without_restart_and_survive_an_outage() {
    let read = |f: &str| std::fs::read_to_string(fixture(f)).unwrap();
    let served: Served = Arc::new(Mutex::new(Some(read("jwks.json"))));
    let (idp, base) = provider(&served);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "[[auth.jwt]]\nname = \"idp\"\nissuer = \"https://idp.test\"\nalgorithms = [\"RS256\"]\n\
             discovery = \"{}\"\nrefetch_min_interval = \"1s\"\n\n{}\
             [[routes]]\nname = \"api\"\nproxy = {{ cluster = \"c\" }}\n\
             auth = {{ methods = [\"jwt:idp\"], forward = {{ \"x-user\" = \"subject\" }} }}\n",
            base.lock().unwrap(),
            cluster("c", &[&up], "")
        ),
    ));
    // Keys were fetched before `ready`: the first request verifies.
    let bearer = |t: &str| {
        request(
            gw.main(),
            &format!("GET /a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"),
        )
    };
    assert_eq!(
        bearer(&token("rsa-jwks.key.pem", "jwks-1", "alice")).status,
        200
    );
    assert_eq!(fetches(&gw, "ok"), 1.0);
    let targets: Vec<String> = idp.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/.well-known/openid-configuration", "/keys"]);

    // The provider rotates: a token with the new kid is refused once (the
    // request never waits on the network), triggers a refetch, then passes.
    *served.lock().unwrap() = Some(read("jwks-rotated.json"));
    let rotated = token("rsa-other.key.pem", "jwks-2", "bob");
    let r = bearer(&rotated);
    assert_eq!(r.status, 401);
    wait_metric(&gw, |m| {
        m.sum(
            "ringgate_auth_jwks_fetches_total",
            &[("issuer", "idp"), ("result", "ok")],
        ) >= 2.0
    });
    assert_eq!(bearer(&rotated).status, 200);
    assert_eq!(up.wait_requests(2)[1].header("x-user"), Some("bob"));

    // A flood of unknown kids costs the provider at most one fetch per
    // refetch_min_interval.
    let before = idp.request_count();
    for i in 0..50 {
        let r = bearer(&token("rsa-other.key.pem", &format!("random-{i}"), "eve"));
        assert_eq!(r.status, 401);
    }
    let during = idp.request_count() - before;
    assert!(
        during <= 4,
        "{during} provider requests for 50 unknown kids"
    );

    // The provider goes down: fetches fail, the last keys keep verifying
    // tokens never seen before.
    *served.lock().unwrap() = None;
    let errors = fetches(&gw, "error");
    let r = bearer(&token("rsa-other.key.pem", "unknown-kid", "eve"));
    assert_eq!(r.status, 401);
    wait_metric(&gw, |m| {
        m.sum(
            "ringgate_auth_jwks_fetches_total",
            &[("issuer", "idp"), ("result", "error")],
        ) > errors
    });
    gw.wait_log("fetching signing keys failed");
    assert_eq!(
        bearer(&token("rsa-jwks.key.pem", "jwks-1", "carol")).status,
        200
    );
    assert_eq!(
        bearer(&token("rsa-other.key.pem", "jwks-2", "dave")).status,
        200
    );
    let m = scrape(&gw);
    assert_eq!(m.sum("ringgate_auth_jwks_keys", &[("issuer", "idp")]), 2.0);
}

#[test]
fn an_unreachable_provider_at_start_delays_nothing_but_its_own_routes() {
    let served: Served = Arc::new(Mutex::new(None));
    let (_idp, base) = provider(&served);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[[auth.jwt]]\nname = \"idp\"\nalgorithms = [\"RS256\"]\njwks_url = \"{}/keys\"\n\
             fetch_timeout = \"2s\"\nrefetch_min_interval = \"1s\"\n\n{}\
             [[routes]]\nname = \"api\"\nmatch = {{ prefix = \"/api\" }}\nproxy = {{ cluster = \"c\" }}\n\
             auth = {{ methods = [\"jwt\"] }}\n\n{}",
            base.lock().unwrap(),
            cluster("c", &[&up], ""),
            route_all("c")
        ),
    ));
    gw.wait_log("fetching signing keys failed");
    assert_eq!(get(gw.main(), "/open").status, 200);
    let t = token("rsa-jwks.key.pem", "jwks-1", "alice");
    let bearer = || {
        request(
            gw.main(),
            &format!("GET /api HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"),
        )
    };
    assert_eq!(bearer().status, 401);
    // The provider comes up: the next refetch loads the keys.
    *served.lock().unwrap() = Some(std::fs::read_to_string(fixture("jwks.json")).unwrap());
    assert_eq!(bearer().status, 401);
    wait_metric(&gw, |m| {
        m.sum("ringgate_auth_jwks_keys", &[("issuer", "idp")]) == 1.0
    });
    assert_eq!(bearer().status, 200);
}

//! Authentication and authorization on the real binary: JWTs of every
//! supported algorithm from PEM files, a JWKS file and an HMAC secret, the
//! hostile tokens RFC 8725 warns about, API keys with rotation windows,
//! scopes and groups, identity headers, and nothing reaching the upstream
//! when a request is refused. Keys: tests/fixtures/auth (gen.sh made them).

use crate::common::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hash(key: &str) -> String {
    ringgate::auth::apikey::hash_key(key.as_bytes())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Good claims for the `idp` issuer, with `extra` merged over them.
fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": "https://idp.test",
        "aud": "orders",
        "sub": "alice",
        "exp": now() + 600,
        "iat": now(),
        "scope": "orders:read profile",
        "roles": ["staff"],
        "tenant": "acme",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = read(key_file);
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// An ES256 token with `extra` merged over the good claims.
fn es(extra: Value) -> String {
    sign(Algorithm::ES256, "ec256.key.pem", None, &claims(extra))
}

/// A token with a hand-made header and an HMAC signature under `secret`.
fn forge(header: &Value, claims: &Value, secret: &[u8]) -> String {
    use hmac::Mac;
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(message.as_bytes());
    format!("{message}.{}", b64(&mac.finalize().into_bytes()))
}

fn auth_config(up: &Upstream) -> String {
    config(
        "io_uring",
        &format!(
            r#"[[auth.jwt]]
name = "idp"
issuer = "https://idp.test"
audiences = ["orders"]
algorithms = ["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"]
pem_files = [{{ file = "{rsa}", kid = "rsa-1" }}, {{ file = "{ec256}" }}, {{ file = "{ec384}" }}, {{ file = "{ed}" }}]
jwks_file = "{jwks}"
hmac_secret_file = "{hs}"
groups_claim = "roles"

[[auth.jwt]]
name = "rs-only"
algorithms = ["RS256"]
pem_files = [{{ file = "{rsa}" }}]

[[auth.consumers]]
id = "mobile"
groups = ["partners"]
scopes = ["orders:read"]
keys = [
  {{ hash = "{current}" }},
  {{ hash = "{old}", expires = "2020-01-01T00:00:00Z" }},
  {{ hash = "{next}", not_before = "2999-01-01T00:00:00Z" }},
]

{cluster}
[[routes]]
name = "orders"
match = {{ prefix = "/orders" }}
proxy = {{ cluster = "c" }}
auth = {{ methods = ["jwt:idp", "api_key"], scopes = ["orders:read"], forward = {{ "x-auth-subject" = "subject", "x-consumer-id" = "consumer", "x-tenant" = "claim:tenant" }} }}

[[routes]]
name = "staff"
match = {{ prefix = "/staff" }}
proxy = {{ cluster = "c" }}
auth = {{ methods = ["jwt"], groups = ["admin", "staff"], claims = [{{ name = "tenant", equals = "acme" }}], forward_credentials = true }}

[[routes]]
name = "rs"
match = {{ prefix = "/rs" }}
proxy = {{ cluster = "c" }}
auth = {{ methods = ["jwt:rs-only"] }}

[[routes]]
name = "open"
proxy = {{ cluster = "c" }}
"#,
            rsa = fixture("rsa.pub.pem"),
            ec256 = fixture("ec256.pub.pem"),
            ec384 = fixture("ec384.pub.pem"),
            ed = fixture("ed.pub.pem"),
            jwks = fixture("jwks.json"),
            hs = fixture("hs.secret"),
            current = hash("key-current"),
            old = hash("key-old"),
            next = hash("key-next"),
            cluster = cluster("c", &[up], ""),
        ),
    )
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    request(
        gw.main(),
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"),
    )
}

/// A refusal: status, JSON error, the challenge, and no token echoed.
fn assert_refused(r: &Response, status: u16, error: Option<&str>, token: &str) {
    assert_json_error(r, status);
    let challenge = r.header("www-authenticate").expect("www-authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"ringgate\""),
        "{challenge}"
    );
    match error {
        Some(e) => assert!(challenge.contains(&format!("error=\"{e}\"")), "{challenge}"),
        None => assert!(!challenge.contains("error="), "{challenge}"),
    }
    if token.len() > 8 {
        assert!(!r.text().contains(token) && !challenge.contains(token));
    }
}

#[test]
fn tokens_of_every_algorithm_pass_and_identity_reaches_the_upstream() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&auth_config(&up));
    let c = claims(json!({}));
    let tokens = [
        sign(Algorithm::RS256, "rsa.key.pem", Some("rsa-1"), &c),
        sign(Algorithm::PS256, "rsa.key.pem", Some("rsa-1"), &c),
        sign(Algorithm::ES256, "ec256.key.pem", None, &c),
        sign(Algorithm::ES384, "ec384.key.pem", None, &c),
        sign(Algorithm::EdDSA, "ed.key.pem", None, &c),
        sign(Algorithm::HS256, "hs.secret", None, &c),
        sign(Algorithm::RS256, "rsa-jwks.key.pem", Some("jwks-1"), &c),
    ];
    for (i, t) in tokens.iter().enumerate() {
        let mut client = Client::connect(gw.main());
        let r = client.request(&format!(
            "GET /orders/{i} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\
             X-Auth-Subject: mallory\r\nX-Consumer-Id: root\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "token {i}: {}", r.text());
    }
    let seen = up.wait_requests(tokens.len());
    for r in &seen {
        assert_eq!(r.header("x-auth-subject"), Some("alice"), "{:?}", r.headers);
        assert_eq!(r.header_count("x-auth-subject"), 1, "spoofed copy removed");
        assert_eq!(r.header("x-consumer-id"), None, "spoofed copy removed");
        assert_eq!(r.header("x-tenant"), Some("acme"));
        assert_eq!(r.header("authorization"), None, "credentials not forwarded");
    }

    // The same token again is served from the cache.
    let before = scrape(&gw).sum("ringgate_auth_token_cache_total", &[("result", "hit")]);
    let mut client = Client::connect(gw.main());
    for _ in 0..3 {
        let r = client.request(&format!(
            "GET /orders/again HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            tokens[0]
        ));
        assert_eq!(r.status, 200);
    }
    let after = scrape(&gw).sum("ringgate_auth_token_cache_total", &[("result", "hit")]);
    assert!(after >= before + 2.0, "cache hits {before} -> {after}");

    // forward_credentials keeps Authorization; groups and claims allow.
    let r = bearer(&gw, "/staff", &tokens[2]);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = up.wait_requests(tokens.len() + 4);
    assert!(last[tokens.len() + 3].header("authorization").is_some());
}

#[test]
fn hostile_and_invalid_tokens_are_refused_and_nothing_reaches_the_upstream() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&auth_config(&up));
    let good = claims(json!({}));
    let rsa_pub = read("rsa.pub.pem");
    let hs = read("hs.secret");
    let signed_rs = sign(Algorithm::RS256, "rsa.key.pem", Some("rsa-1"), &good);
    let (head, rest) = signed_rs.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let t = now();

    let cases: Vec<(&str, &str, String)> = vec![
        (
            "alg none",
            "/orders",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","typ":"JWT"}"#),
                b64(good.to_string().as_bytes())
            ),
        ),
        (
            "HS256 signed with the RSA public key",
            "/orders",
            forge(&json!({"alg": "HS256", "typ": "JWT"}), &good, &rsa_pub),
        ),
        (
            "HS256 on an RS256-only issuer",
            "/rs",
            forge(&json!({"alg": "HS256"}), &good, &rsa_pub),
        ),
        (
            "signed by an untrusted key",
            "/orders",
            sign(Algorithm::RS256, "rsa-other.key.pem", Some("rsa-1"), &good),
        ),
        (
            "unknown kid",
            "/orders",
            sign(Algorithm::RS256, "rsa.key.pem", Some("nope"), &good),
        ),
        (
            "expired beyond leeway",
            "/orders",
            es(json!({"exp": t - 120})),
        ),
        ("nbf in the future", "/orders", es(json!({"nbf": t + 3600}))),
        (
            "nbf of the wrong type",
            "/orders",
            es(json!({"nbf": "99999999999"})),
        ),
        ("missing exp", "/orders", es(json!({"exp": null}))),
        ("wrong iss", "/orders", es(json!({"iss": "https://evil"}))),
        ("wrong aud", "/orders", es(json!({"aud": "billing"}))),
        (
            "tampered payload",
            "/orders",
            format!(
                "{head}.{}.{sig}",
                b64(claims(json!({"sub": "admin"})).to_string().as_bytes())
            ),
        ),
        ("malformed base64", "/orders", format!("{head}.!!!.{sig}")),
        ("two parts", "/orders", format!("{head}.{sig}")),
        (
            "crit header",
            "/orders",
            forge(&json!({"alg": "HS256", "crit": ["exp"]}), &good, &hs),
        ),
        (
            "typ not a JWT",
            "/orders",
            forge(&json!({"alg": "HS256", "typ": "JOSE+JSON"}), &good, &hs),
        ),
        (
            "jwk header naming its own key",
            "/rs",
            forge(
                &json!({"alg": "HS256", "jwk": {"kty": "oct", "k": b64(&hs)}}),
                &good,
                &hs,
            ),
        ),
        (
            "oversized",
            "/orders",
            sign(
                Algorithm::HS256,
                "hs.secret",
                None,
                &claims(json!({"pad": "x".repeat(9000)})),
            ),
        ),
    ];
    for (name, path, token) in &cases {
        let r = bearer(&gw, path, token);
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        assert_refused(&r, 401, Some("invalid_token"), token);
    }
    // Within the leeway (60 s) is still fine.
    let r = bearer(&gw, "/orders", &es(json!({"exp": t - 20})));
    assert_eq!(r.status, 200);

    // No credentials at all: 401 without an error code (RFC 6750 3.1).
    let r = get(gw.main(), "/orders");
    assert_refused(&r, 401, None, "");
    // Valid, but not allowed: 403 insufficient_scope naming the scope.
    let r = bearer(&gw, "/orders", &es(json!({"scope": "profile"})));
    assert_refused(&r, 403, Some("insufficient_scope"), "");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("scope=\"orders:read\""));
    let r = bearer(&gw, "/staff", &es(json!({"roles": ["guest"]})));
    assert_refused(&r, 403, Some("insufficient_scope"), "");
    let r = bearer(&gw, "/staff", &es(json!({"tenant": "other"})));
    assert_eq!(r.status, 403);

    assert_eq!(
        up.request_count(),
        1,
        "only the token within leeway got through"
    );
    let m = scrape(&gw);
    assert_eq!(
        m.sum(
            "ringgate_auth_denied_total",
            &[("route", "orders"), ("status", "401")]
        ),
        (cases.iter().filter(|c| c.1 == "/orders").count() + 1) as f64
    );
    assert_eq!(
        m.sum("ringgate_auth_denied_total", &[("status", "403")]),
        3.0
    );
    let audit = gw.wait_log(r#""reason":"expired""#);
    assert!(audit.contains(r#""event":"auth_denied""#), "{audit}");
    for (_, _, token) in &cases {
        assert!(
            !gw.log_text().contains(token.as_str()),
            "a token reached the log"
        );
    }
}

#[test]
fn api_keys_by_hash_with_rotation_windows() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&auth_config(&up));
    let with_key = |key: &str| {
        request(
            gw.main(),
            &format!("GET /orders HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\nX-Consumer-Id: root\r\n\r\n"),
        )
    };
    assert_eq!(with_key("key-current").status, 200);
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header("x-consumer-id"), Some("mobile"));
    assert_eq!(seen[0].header("x-auth-subject"), Some("mobile"));
    assert_eq!(
        seen[0].header("x-api-key"),
        None,
        "the key stays at the gateway"
    );

    for key in ["key-old", "key-next", "key-wrong", "key-curren"] {
        let r = with_key(key);
        assert_refused(&r, 401, Some("invalid_token"), key);
    }
    gw.wait_log(r#""reason":"api_key_expired""#);
    gw.wait_log(r#""reason":"api_key_not_yet_valid""#);
    assert!(!gw.log_text().contains("key-current"));

    // Revoked by a reload that drops the key.
    let text = std::fs::read_to_string(&gw.config_path)
        .unwrap()
        .replace(&format!("{{ hash = \"{}\" }},", hash("key-current")), "");
    std::fs::write(&gw.config_path, text).unwrap();
    gw.signal("HUP");
    wait_metric(&gw, |m| {
        m.sum("ringgate_config_reloads_total", &[("result", "ok")]) == 1.0
    });
    assert_refused(
        &with_key("key-current"),
        401,
        Some("invalid_token"),
        "key-current",
    );
    assert_eq!(up.request_count(), 1);
}

#[test]
fn short_hmac_secrets_and_unknown_issuers_are_refused_at_load() {
    let up = Upstream::named("ok");
    let bad = config(
        "epoll",
        &format!(
            "[[auth.jwt]]\nname = \"x\"\nalgorithms = [\"HS256\", \"none\"]\nhmac_secret_file = \"{}\"\n\n{}\
             [[routes]]\nname = \"r\"\nproxy = {{ cluster = \"c\" }}\nauth = {{ methods = [\"jwt:y\"] }}\n",
            fixture("hs-short.secret"),
            cluster("c", &[&up], "")
        ),
    );
    let err = Gateway::try_start(&bad).err().expect("refused");
    for want in [
        "auth.jwt[0].algorithms[1]",
        "auth.jwt[0].hmac_secret_file: the secret must be at least 32 bytes",
        "routes[0].auth.methods[0]",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
}

#[test]
fn tokens_from_a_cookie_a_header_or_the_query_are_removed_before_forwarding() {
    let up = Upstream::with(|r| Reply::ok(&r.target));
    let route = |name: &str, from: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ prefix = \"/{name}\" }}\nproxy = {{ cluster = \"c\" }}\n\
             auth = {{ methods = [\"jwt\"], token_from = \"{from}\" }}\n\n"
        )
    };
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "[[auth.jwt]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\nhmac_secret_file = \"{}\"\n\n{}{}{}{}",
            fixture("hs.secret"),
            cluster("c", &[&up], ""),
            route("cookie", "cookie:session"),
            route("header", "header:x-token"),
            route("query", "query:access_token"),
        ),
    ));
    let t = sign(Algorithm::HS256, "hs.secret", None, &claims(json!({})));
    let send = |raw: String| request(gw.main(), &raw);

    let r = send(format!(
        "GET /cookie/a HTTP/1.1\r\nHost: t\r\nCookie: theme=dark; session={t}; lang=en\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header("cookie"), Some("theme=dark; lang=en"));

    let r = send(format!(
        "GET /header/a HTTP/1.1\r\nHost: t\r\nX-Token: {t}\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(up.wait_requests(2)[1].header("x-token"), None);

    let r = send(format!(
        "GET /query/a?page=2&access_token={t}&sort=asc HTTP/1.1\r\nHost: t\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "/query/a?page=2&sort=asc");

    // The bearer header is not looked at on these routes, and a token in
    // the wrong place is no token.
    let r = send(format!(
        "GET /cookie/a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\n\r\n"
    ));
    assert_refused(&r, 401, None, &t);
    let r = send(format!(
        "GET /query/a?token={t} HTTP/1.1\r\nHost: t\r\n\r\n"
    ));
    assert_refused(&r, 401, None, &t);
    assert_eq!(up.request_count(), 3);
}

//! The client-credentials token endpoint on the real binary: clients with
//! hashed secrets get ES256 tokens that the gateway's own routes accept,
//! errors follow RFC 6749 5.2, and the published JWKS verifies the tokens.

use crate::common::*;
use base64::Engine as _;
use serde_json::Value;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn token_config(up: &Upstream, public_key: &str) -> String {
    config(
        "io_uring",
        &format!(
            r#"[auth.token_endpoint]
issuer = "https://gw.test"
audience = "orders"
algorithm = "ES256"
signing_key_file = "{key}"
public_key_file = "{public}"
kid = "gw-1"
lifetime = "10m"

[[auth.clients]]
id = "reporting"
secret_hash = "{hash}"
scopes = ["orders:read", "reports:write"]

{cluster}
[[routes]]
name = "token"
match = {{ path = "/oauth2/token" }}
oauth2 = "token"

[[routes]]
name = "jwks"
match = {{ path = "/.well-known/jwks.json" }}
oauth2 = "jwks"

[[routes]]
name = "orders"
proxy = {{ cluster = "c" }}
auth = {{ methods = ["jwt:gateway"], scopes = ["orders:read"], forward = {{ "x-client" = "subject" }} }}
"#,
            key = fixture("gw.key.pem"),
            public = fixture(public_key),
            hash = ringgate::auth::apikey::hash_key(b"s3cret value"),
            cluster = cluster("c", &[up], ""),
        ),
    )
}

fn post_form(gw: &Gateway, extra_headers: &str, body: &str) -> Response {
    request(
        gw.main(),
        &format!(
            "POST /oauth2/token HTTP/1.1\r\nHost: t\r\n{extra_headers}\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn json(r: &Response) -> Value {
    serde_json::from_str(&r.text()).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

#[test]
fn issued_tokens_open_protected_routes_and_verify_against_the_jwks() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&token_config(&up, "gw.pub.pem"));

    let r = post_form(
        &gw,
        "",
        "grant_type=client_credentials&client_id=reporting&client_secret=s3cret+value",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = json(&r);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "orders:read reports:write");
    let token = body["access_token"].as_str().unwrap().to_string();

    let r = request(
        gw.main(),
        &format!("GET /orders HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.wait_requests(1)[0].header("x-client"), Some("reporting"));

    // The published key verifies the token (as an upstream would).
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&get(gw.main(), "/.well-known/jwks.json").text()).unwrap();
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some("gw-1"));
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["orders"]);
    validation.set_issuer(&["https://gw.test"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], "reporting");
    assert_eq!(data.header.kid.as_deref(), Some("gw-1"));

    // HTTP Basic, with a narrower scope.
    let basic = base64::engine::general_purpose::STANDARD.encode("reporting:s3cret%20value");
    let r = post_form(
        &gw,
        &format!("Authorization: Basic {basic}\r\n"),
        "grant_type=client_credentials&scope=reports%3Awrite",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let narrow = json(&r)["access_token"].as_str().unwrap().to_string();
    assert_eq!(json(&r)["scope"], "reports:write");
    // ...which the orders route refuses for want of its scope.
    let r = request(
        gw.main(),
        &format!("GET /orders HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {narrow}\r\n\r\n"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(up.request_count(), 1);
}

#[test]
fn token_errors_follow_rfc_6749() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&token_config(&up, "gw.pub.pem"));
    let basic = |creds: &str| {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(creds)
        )
    };
    let cases = [
        (
            "",
            "grant_type=client_credentials&client_id=reporting&client_secret=wrong",
            401,
            "invalid_client",
        ),
        (
            "",
            "grant_type=client_credentials&client_id=nobody&client_secret=s3cret+value",
            401,
            "invalid_client",
        ),
        (
            "",
            "grant_type=client_credentials&client_id=reporting",
            401,
            "invalid_client",
        ),
        (
            "",
            "grant_type=client_credentials&client_id=reporting&client_secret=s3cret+value&scope=admin",
            400,
            "invalid_scope",
        ),
        (
            "",
            "grant_type=password&client_id=reporting&client_secret=s3cret+value",
            400,
            "unsupported_grant_type",
        ),
        (
            "",
            "client_id=reporting&client_secret=s3cret+value",
            400,
            "invalid_request",
        ),
        (
            "",
            "grant_type=client_credentials&grant_type=client_credentials&client_id=reporting&client_secret=s3cret+value",
            400,
            "invalid_request",
        ),
    ];
    for (headers, body, status, error) in cases {
        let r = post_form(&gw, headers, body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(json(&r)["error"], error, "{body}");
        assert!(!r.text().contains("s3cret"));
    }
    let r = post_form(
        &gw,
        &basic("reporting:nope"),
        "grant_type=client_credentials",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"ringgate\"")
    );

    let r = get(gw.main(), "/oauth2/token");
    assert_json_error(&r, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(up.request_count(), 0);
}

#[test]
fn a_public_key_that_does_not_match_is_refused_at_load() {
    let up = Upstream::named("ok");
    let err = Gateway::try_start(&token_config(&up, "ec256.pub.pem"))
        .err()
        .expect("refused");
    assert!(
        err.contains("auth.token_endpoint.public_key_file: does not match the signing key"),
        "{err}"
    );
}

//! The built-in OAuth2 client-credentials token endpoint (RFC 6749 4.4):
//! clients defined in config with hashed secrets and allowed scopes get
//! short-lived JWTs signed with the gateway's key (ES256 or EdDSA). The
//! gateway publishes the public key as a JWKS and verifies its own tokens
//! as the issuer named `gateway`.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::apikey::hash_key_bytes;
use crate::http::head::RequestView;

/// A form-encoded value as UTF-8 (`+` is a space, `%XX` a byte).
fn decode(v: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    crate::security::validate::decode_query_value(v, &mut out);
    String::from_utf8(out).ok()
}

/// A client allowed to ask for tokens.
#[derive(Debug)]
pub struct TokenClient {
    pub id: Box<str>,
    pub secret_hash: [u8; 32],
    pub scopes: Box<[Box<str>]>,
}

/// `[auth.token_endpoint]` as loaded.
pub struct TokenIssuer {
    /// `iss` of issued tokens.
    pub iss: String,
    pub audience: Option<String>,
    pub alg: Algorithm,
    pub kid: String,
    pub key: EncodingKey,
    /// The JWKS document published for the public key.
    pub jwks: String,
    pub lifetime: u64,
    pub clients: Vec<TokenClient>,
}

/// A response of the endpoint: status, extra header lines, JSON body.
pub struct TokenResponse {
    pub status: u16,
    pub headers: Vec<(Box<str>, Box<str>)>,
    pub body: String,
}

fn error(status: u16, code: &str, basic: bool) -> TokenResponse {
    let mut headers = vec![
        ("content-type".into(), "application/json".into()),
        ("cache-control".into(), "no-store".into()),
    ];
    if basic {
        headers.push(("www-authenticate".into(), "Basic realm=\"ringgate\"".into()));
    }
    TokenResponse {
        status,
        headers,
        body: json!({ "error": code }).to_string(),
    }
}

/// `Authorization: Basic` credentials, form-decoded per RFC 6749 2.3.1.
fn basic_credentials(req: &RequestView<'_>) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(super::authorization(req, b"basic")?)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((decode(id.as_bytes())?, decode(secret.as_bytes())?))
}

/// The parameters of an `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> Option<Vec<(String, String)>> {
    body.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = decode(it.next()?)?;
            let v = decode(it.next().unwrap_or_default())?;
            Some((k, v))
        })
        .collect()
}

impl TokenIssuer {
    /// Answers one token request (`body` read whole) at `now`.
    pub fn handle(&self, req: &RequestView<'_>, body: &[u8], now: u64) -> TokenResponse {
        let form_type = req.header(b"content-type").is_some_and(|t| {
            t.split(|&b| b == b';').next().is_some_and(|m| {
                m.trim_ascii()
                    .eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
            })
        });
        if !form_type {
            return error(400, "invalid_request", false);
        }
        let Some(params) = form(body) else {
            return error(400, "invalid_request", false);
        };
        let mut seen = std::collections::HashSet::new();
        if !params.iter().all(|(k, _)| seen.insert(k.as_str())) {
            // RFC 6749 3.2: parameters must not be repeated.
            return error(400, "invalid_request", false);
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let basic = basic_credentials(req);
        let used_basic = basic.is_some();
        let (id, secret) = match (basic, param("client_id"), param("client_secret")) {
            (Some((id, secret)), None, None) => (id, secret),
            (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
            (None, _, None) => return error(401, "invalid_client", true),
            _ => return error(400, "invalid_request", false),
        };
        if param("grant_type") != Some("client_credentials") {
            return match param("grant_type") {
                None => error(400, "invalid_request", false),
                Some(_) => error(400, "unsupported_grant_type", false),
            };
        }
        // Hash first, then compare every client's hash in constant time.
        let presented = hash_key_bytes(secret.as_bytes());
        let client = self.clients.iter().find(|c| {
            c.id.as_bytes() == id.as_bytes() && bool::from(c.secret_hash.ct_eq(&presented))
        });
        let Some(client) = client else {
            return error(401, "invalid_client", used_basic);
        };
        let granted: Vec<&str> = match param("scope") {
            None => client.scopes.iter().map(|s| &**s).collect(),
            Some(requested) => {
                let wanted: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
                if !wanted
                    .iter()
                    .all(|w| client.scopes.iter().any(|s| &**s == *w))
                {
                    return error(400, "invalid_scope", false);
                }
                wanted
            }
        };
        let scope = granted.join(" ");
        let mut jti = [0u8; 16];
        fill_random(&mut jti);
        let mut claims = json!({
            "iss": self.iss,
            "sub": &*client.id,
            "client_id": &*client.id,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "scope": scope,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
        if let Some(aud) = &self.audience {
            claims["aud"] = json!(aud);
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &self.key) else {
            return error(500, "server_error", false);
        };
        TokenResponse {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "no-store".into()),
                ("pragma".into(), "no-cache".into()),
            ],
            body: json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.lifetime,
                "scope": scope,
            })
            .to_string(),
        }
    }
}

/// Random bytes from the kernel (token ids; not a key).
fn fill_random(out: &mut [u8]) {
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in out.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8;
        }
    }
}

/// The JWK of a public key as jsonwebtoken holds it (an uncompressed P-256
/// point, or 32 Ed25519 bytes).
pub fn public_jwk(alg: Algorithm, public: &[u8], kid: &str) -> Option<serde_json::Value> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    match alg {
        Algorithm::ES256 if public.len() == 65 && public[0] == 4 => Some(json!({
            "kty": "EC", "crv": "P-256", "x": b64(&public[1..33]), "y": b64(&public[33..]),
            "kid": kid, "use": "sig", "alg": "ES256",
        })),
        Algorithm::EdDSA if public.len() == 32 => Some(json!({
            "kty": "OKP", "crv": "Ed25519", "x": b64(public),
            "kid": kid, "use": "sig", "alg": "EdDSA",
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies() {
        let f = form(b"grant_type=client_credentials&scope=a+b%3Ac").unwrap();
        assert_eq!(f[0], ("grant_type".into(), "client_credentials".into()));
        assert_eq!(f[1], ("scope".into(), "a b:c".into()));
        assert!(form(b"a=%ff").is_none(), "not UTF-8");
    }
}

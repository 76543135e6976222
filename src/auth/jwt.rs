//! JWT verification (RFC 7519, RFC 8725): what a token must be before its
//! claims are trusted.
//!
//! The token is split and its header parsed here, not by the library, so
//! every rule is ours and visible: the algorithm comes from the issuer's
//! configured list (never from the token alone), a key is used only with
//! algorithms of its own family (no HS/RS confusion), `none` never passes,
//! `crit` is refused (no extension is understood), `typ` must name a JWT,
//! and `jku`/`x5u`/`jwk`/`x5c` are never read. `jsonwebtoken` checks the
//! signature; the claims are then read from the JSON with their types
//! checked (`"nbf": "99999999999"` is refused, not ignored) against an
//! injected clock.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::Principal;

/// Why a token was refused. The detail goes to the audit log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    TooLarge,
    Malformed,
    /// `alg` absent, `none`, not configured, or not the key's family.
    Algorithm,
    /// No configured key for the token's `kid` / algorithm.
    UnknownKey,
    Signature,
    /// A `crit` header: no extension is understood.
    Critical,
    /// A `typ` that is not a JWT.
    Type,
    MissingExp,
    /// A registered claim of the wrong JSON type.
    ClaimType,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Issuer,
    Audience,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "token_too_large",
            Reject::Malformed => "malformed",
            Reject::Algorithm => "algorithm",
            Reject::UnknownKey => "unknown_key",
            Reject::Signature => "signature",
            Reject::Critical => "crit",
            Reject::Type => "typ",
            Reject::MissingExp => "missing_exp",
            Reject::ClaimType => "claim_type",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::IssuedInFuture => "issued_in_future",
            Reject::Issuer => "issuer",
            Reject::Audience => "audience",
        }
    }
}

/// One verification key.
pub struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
}

impl Key {
    fn family(&self) -> AlgorithmFamily {
        self.key.family()
    }
}

/// A key set; its `id` changes whenever keys are (re)loaded, which is how
/// cached verifications learn that a rotation happened.
pub struct KeySet {
    pub id: u64,
    pub keys: Vec<Key>,
}

static KEY_SET_IDS: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    pub fn new(keys: Vec<Key>) -> KeySet {
        KeySet {
            id: KEY_SET_IDS.fetch_add(1, Ordering::Relaxed),
            keys,
        }
    }
}

/// A configured issuer.
pub struct Issuer {
    pub name: Box<str>,
    /// `iss` must equal this when set.
    pub iss: Option<String>,
    /// `aud` must contain one of these when non-empty.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySet,
    pub leeway: u64,
    pub max_token_bytes: usize,
    /// Claim holding groups/roles (string or array of strings).
    pub groups_claim: Box<str>,
    /// Keys fetched from a JWKS URL or through OIDC discovery; the workers
    /// hold the current set (see `jwks.rs`).
    pub remote: Option<super::jwks::RemoteSource>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: Option<String>,
    typ: Option<Value>,
    kid: Option<Value>,
    crit: Option<Value>,
}

fn b64(part: &[u8]) -> Result<Vec<u8>, Reject> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Reject::Malformed)
}

/// A verified token: who, until when (`exp`, seconds since the epoch), and
/// under which key set.
pub struct Verified {
    pub principal: Principal,
    pub exp: u64,
    pub key_set: u64,
}

impl Issuer {
    /// Verifies `token` at `now` (seconds since the epoch) with the
    /// configured keys and, when the issuer has remote keys, the current
    /// remote set.
    pub fn verify(
        &self,
        token: &[u8],
        now: u64,
        remote: Option<&KeySet>,
    ) -> Result<Verified, Reject> {
        if token.len() > self.max_token_bytes {
            return Err(Reject::TooLarge);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let header: RawHeader = serde_json::from_slice(&b64(h)?).map_err(|_| Reject::Malformed)?;
        if header.crit.is_some() {
            return Err(Reject::Critical);
        }
        match &header.typ {
            None => {}
            Some(Value::String(t)) if is_jwt_type(t) => {}
            Some(_) => return Err(Reject::Type),
        }
        let alg = header
            .alg
            .as_deref()
            .and_then(|a| a.parse::<Algorithm>().ok())
            .filter(|a| self.algorithms.contains(a))
            .ok_or(Reject::Algorithm)?;
        let kid = match &header.kid {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(Reject::Malformed),
        };
        let family = family_of(alg);
        let sets = std::iter::once(&self.keys).chain(remote);
        let mut candidates = sets
            .flat_map(|set| set.keys.iter().map(move |k| (set.id, k)))
            .filter(|(_, k)| k.family() == family && k.alg.is_none_or(|a| a == alg))
            .filter(|(_, k)| kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(Reject::UnknownKey);
        }
        let message = &token[..h.len() + 1 + p.len()];
        let sig = std::str::from_utf8(sig).map_err(|_| Reject::Malformed)?;
        let key_set = candidates
            .find(|(_, k)| jsonwebtoken::crypto::verify(sig, message, &k.key, alg).unwrap_or(false))
            .map(|(id, _)| id)
            .ok_or(Reject::Signature)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&b64(p)?).map_err(|_| Reject::Malformed)?;
        let exp = self.check_claims(&claims, now)?;
        Ok(Verified {
            principal: Principal::from_claims(claims, &self.groups_claim, &self.name),
            exp,
            key_set,
        })
    }

    /// The registered claims, by type and against `now`; returns `exp`.
    pub fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<u64, Reject> {
        let time = |name: &str| -> Result<Option<u64>, Reject> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(t) if t >= 0.0 => Ok(Some(t as u64)),
                    _ => Err(Reject::ClaimType),
                },
                Some(_) => Err(Reject::ClaimType),
            }
        };
        let exp = time("exp")?.ok_or(Reject::MissingExp)?;
        let nbf = time("nbf")?;
        let iat = time("iat")?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(Reject::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(Reject::NotYetValid);
        }
        if iat.is_some_and(|iat| iat > now.saturating_add(self.leeway)) {
            return Err(Reject::IssuedInFuture);
        }
        match (claims.get("sub"), claims.get("iss")) {
            (Some(s), _) if !s.is_string() => return Err(Reject::ClaimType),
            (_, Some(i)) if !i.is_string() => return Err(Reject::ClaimType),
            _ => {}
        }
        if let Some(want) = &self.iss {
            if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
                return Err(Reject::Issuer);
            }
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audiences.iter().any(|w| w == a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|w| w == a)),
                _ => false,
            };
            if !ok {
                return Err(Reject::Audience);
            }
        }
        Ok(exp)
    }
}

/// `typ` values that say "a JWT" (RFC 7519 5.1, RFC 9068 access tokens).
fn is_jwt_type(t: &str) -> bool {
    let t = t.strip_prefix("application/").unwrap_or(t);
    t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
}

pub fn family_of(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

/// Parses a JWKS document into keys; keys of unknown types or uses other
/// than signing are skipped, and the count of skipped keys is returned.
pub fn parse_jwks(text: &[u8]) -> Result<(Vec<Key>, usize), String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for jwk in &set.keys {
        let signing = jwk
            .common
            .public_key_use
            .as_ref()
            .is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature));
        let key = signing.then(|| DecodingKey::from_jwk(jwk).ok()).flatten();
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        match key {
            Some(key) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
                alg,
            }),
            None => skipped += 1,
        }
    }
    Ok((keys, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer() -> Issuer {
        Issuer {
            name: "t".into(),
            iss: Some("https://idp".into()),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            keys: KeySet::new(vec![Key {
                kid: None,
                key: DecodingKey::from_secret(&[7; 32]),
                alg: None,
            }]),
            leeway: 60,
            max_token_bytes: 8192,
            groups_claim: "groups".into(),
            remote: None,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn times_are_checked_with_leeway_against_the_injected_clock() {
        let i = issuer();
        let base = |extra: Value| {
            let mut c = claims(json!({"iss": "https://idp", "aud": "api"}));
            c.extend(claims(extra));
            i.check_claims(&c, NOW)
        };
        assert_eq!(base(json!({"exp": NOW + 10})), Ok(NOW + 10));
        assert_eq!(
            base(json!({"exp": NOW - 30})),
            Ok(NOW - 30),
            "within leeway"
        );
        assert_eq!(base(json!({"exp": NOW - 60})), Err(Reject::Expired));
        assert_eq!(base(json!({})), Err(Reject::MissingExp));
        assert_eq!(
            base(json!({"exp": NOW + 10, "nbf": NOW + 30})),
            Ok(NOW + 10),
            "nbf within leeway"
        );
        assert_eq!(
            base(json!({"exp": NOW + 900, "nbf": NOW + 61})),
            Err(Reject::NotYetValid)
        );
        assert_eq!(
            base(json!({"exp": NOW + 900, "iat": NOW + 3600})),
            Err(Reject::IssuedInFuture)
        );
    }

    #[test]
    fn registered_claims_of_the_wrong_type_fail() {
        let i = issuer();
        for bad in [
            json!({"exp": "99999999999"}),
            json!({"exp": NOW + 10, "nbf": "99999999999"}),
            json!({"exp": NOW + 10, "iat": [1]}),
            json!({"exp": -5}),
            json!({"exp": NOW + 10, "sub": 42}),
        ] {
            let mut c = claims(json!({"iss": "https://idp", "aud": "api"}));
            c.extend(claims(bad.clone()));
            assert_eq!(i.check_claims(&c, NOW), Err(Reject::ClaimType), "{bad}");
        }
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let i = issuer();
        let check = |v: Value| i.check_claims(&claims(v), NOW);
        let exp = NOW + 10;
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://evil", "aud": "api"})),
            Err(Reject::Issuer)
        );
        assert_eq!(
            check(json!({"exp": exp, "aud": "api"})),
            Err(Reject::Issuer)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://idp", "aud": ["x", "api"]})),
            Ok(exp)
        );
        assert_eq!(
            check(json!({"exp": exp, "iss": "https://idp", "aud": ["x"]})),
            Err(Reject::Audience)
        );
    }

    #[test]
    fn jwt_types() {
        for ok in ["JWT", "jwt", "at+jwt", "application/at+JWT"] {
            assert!(is_jwt_type(ok), "{ok}");
        }
        for bad in ["JWS", "", "application/json"] {
            assert!(!is_jwt_type(bad), "{bad}");
        }
    }
}

//! Validation of `[auth]` (issuers, keys, consumers) and of routes' `auth`
//! tables. Key files are read here, at load: a reload with a bad key is
//! refused like any other bad config.

use std::collections::HashSet;
use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::{is_token, Checker};
use crate::auth::apikey::{parse_hash, ApiKeys, Consumer, StoredKey};
use crate::auth::introspect::Endpoint;
use crate::auth::jwks::{KeySource, RemoteSource};
use crate::auth::jwt::{family_of, parse_jwks, Issuer, Key, KeySet};
use crate::auth::token_endpoint::{public_jwk, TokenClient, TokenIssuer};
use crate::auth::{AuthConfig, ClaimRule, Method, RouteAuth, Source, TokenSource};
use crate::config::diagnostic::KeyPath;
use crate::config::raw_auth::{RawAuth, RawIntrospection, RawIssuer, RawRouteAuth};

/// Shortest HMAC secret accepted (RFC 7518 3.2: at least the hash size).
const MIN_HMAC_SECRET: usize = 32;

pub(super) fn auth(c: &mut Checker<'_>, p: &KeyPath, raw: &RawAuth, dir: &Path) -> AuthConfig {
    if !(16..=1 << 20).contains(&raw.cache_entries) {
        c.error(&p.key("cache_entries"), "must be between 16 and 1048576");
    }
    if !is_token(&raw.api_key_header) {
        c.error(&p.key("api_key_header"), "not a header name");
    }
    let mut issuers = Vec::new();
    let mut names = HashSet::new();
    for (i, ri) in raw.jwt.iter().enumerate() {
        let ip = p.key("jwt").index(i);
        if !names.insert(ri.name.as_str()) {
            c.error(
                &ip.key("name"),
                format!("duplicate issuer name {:?}", ri.name),
            );
        }
        issuers.push(issuer(c, &ip, ri, dir));
    }
    let mut api_keys = ApiKeys::default();
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    for (i, rc) in raw.consumers.iter().enumerate() {
        let cp = p.key("consumers").index(i);
        if rc.id.is_empty() || !ids.insert(rc.id.as_str()) {
            c.error(
                &cp.key("id"),
                format!("empty or duplicate consumer id {:?}", rc.id),
            );
        }
        let consumer = api_keys.add_consumer(Consumer {
            id: rc.id.as_str().into(),
            groups: rc.groups.iter().map(|g| g.as_str().into()).collect(),
            scopes: rc.scopes.iter().map(|s| s.as_str().into()).collect(),
        });
        for (j, rk) in rc.keys.iter().enumerate() {
            let kp = cp.key("keys").index(j);
            let Some(hash) = parse_hash(&rk.hash) else {
                c.error(
                    &kp.key("hash"),
                    "not \"sha256:<64 hex digits>\" (see `ringgate hash-key`)",
                );
                continue;
            };
            if !hashes.insert(hash) {
                c.error(&kp.key("hash"), "the same key is listed twice");
            }
            let mut time = |key: &str, text: &Option<String>| -> Option<u64> {
                let t = text.as_deref()?;
                match humantime::parse_rfc3339_weak(t) {
                    Ok(at) => at
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs()),
                    Err(_) => {
                        c.error(&kp.key(key), format!("{t:?} is not an RFC 3339 time"));
                        None
                    }
                }
            };
            let not_before = time("not_before", &rk.not_before);
            let expires = time("expires", &rk.expires);
            api_keys.add_key(StoredKey {
                hash,
                consumer,
                not_before,
                expires,
            });
        }
    }
    let token = raw
        .token_endpoint
        .as_ref()
        .and_then(|te| token_endpoint(c, &p.key("token_endpoint"), te, raw, dir));
    let token = token.map(|(endpoint, own)| {
        if issuers.iter().any(|i| &*i.name == GATEWAY_ISSUER) {
            c.error(
                &p.key("jwt"),
                format!("the issuer name {GATEWAY_ISSUER:?} is taken by the token endpoint"),
            );
        }
        issuers.push(own);
        endpoint
    });
    let mut introspection = Vec::new();
    let mut names = HashSet::new();
    for (i, ri) in raw.introspection.iter().enumerate() {
        let ep = p.key("introspection").index(i);
        if ri.name.is_empty() || !names.insert(ri.name.as_str()) {
            c.error(
                &ep.key("name"),
                format!("empty or duplicate endpoint name {:?}", ri.name),
            );
        }
        if let Some(e) = introspection_endpoint(c, &ep, ri, dir) {
            introspection.push(std::sync::Arc::new(e));
        }
    }
    if !(1..=64).contains(&raw.introspection_threads) {
        c.error(&p.key("introspection_threads"), "must be between 1 and 64");
    }
    AuthConfig {
        token,
        issuers,
        api_keys,
        api_key_header: raw.api_key_header.to_ascii_lowercase().into_bytes().into(),
        cache_entries: raw.cache_entries as usize,
        introspection,
        introspection_threads: raw.introspection_threads.clamp(1, 64) as usize,
    }
}

fn introspection_endpoint(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawIntrospection,
    dir: &Path,
) -> Option<Endpoint> {
    if !(raw.url.starts_with("https://") || raw.url.starts_with("http://")) {
        c.error(&p.key("url"), "must be an http:// or https:// URL");
    }
    if raw.client_id.is_empty() {
        c.error(&p.key("client_id"), "must not be empty");
    }
    if raw.timeout.0.is_zero() || raw.timeout.0 > std::time::Duration::from_secs(60) {
        c.error(&p.key("timeout"), "must be between 1ms and 60s");
    }
    if raw.cache_max_ttl.0 > std::time::Duration::from_secs(86_400) {
        c.error(&p.key("cache_max_ttl"), "must be at most 1d");
    }
    if raw.negative_ttl.0 > std::time::Duration::from_secs(3_600) {
        c.error(&p.key("negative_ttl"), "must be at most 1h");
    }
    let path = dir.join(&raw.client_secret_file);
    let secret = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim_end_matches(['\r', '\n']).to_string(),
        Err(e) => {
            c.error(
                &p.key("client_secret_file"),
                format!("{}: {e}", path.display()),
            );
            return None;
        }
    };
    if secret.is_empty() {
        c.error(&p.key("client_secret_file"), "the file is empty");
    }
    Some(Endpoint::new(
        &raw.name,
        &raw.url,
        &raw.client_id,
        &secret,
        raw.timeout.0.max(std::time::Duration::from_millis(1)),
        raw.cache_max_ttl.0,
        raw.negative_ttl.0,
        raw.max_token_bytes.0 as usize,
        &raw.groups_claim,
    ))
}

/// The issuer name under which the gateway verifies its own tokens.
pub const GATEWAY_ISSUER: &str = "gateway";

fn token_endpoint(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &crate::config::raw_auth::RawTokenEndpoint,
    auth: &RawAuth,
    dir: &Path,
) -> Option<(TokenIssuer, Issuer)> {
    use jsonwebtoken::EncodingKey;
    let alg = match raw.algorithm.as_str() {
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            c.error(
                &p.key("algorithm"),
                format!("{other:?} is not \"ES256\" or \"EdDSA\""),
            );
            return None;
        }
    };
    let read = |c: &mut Checker<'_>, key: &str, file: &str| -> Option<Vec<u8>> {
        let path = dir.join(file);
        std::fs::read(&path)
            .map_err(|e| c.error(&p.key(key), format!("{}: {e}", path.display())))
            .ok()
    };
    let private = read(c, "signing_key_file", &raw.signing_key_file)?;
    let public = read(c, "public_key_file", &raw.public_key_file)?;
    let (key, decoding) = match alg {
        Algorithm::ES256 => (
            EncodingKey::from_ec_pem(&private),
            DecodingKey::from_ec_pem(&public),
        ),
        _ => (
            EncodingKey::from_ed_pem(&private),
            DecodingKey::from_ed_pem(&public),
        ),
    };
    let Ok(key) = key else {
        c.error(
            &p.key("signing_key_file"),
            format!("not a PKCS#8 PEM {} private key", raw.algorithm),
        );
        return None;
    };
    let Ok(decoding) = decoding else {
        c.error(
            &p.key("public_key_file"),
            format!("not a PEM {} public key", raw.algorithm),
        );
        return None;
    };
    // The two must be a pair: sign a probe and verify it.
    let probe = jsonwebtoken::crypto::sign(b"ringgate key check", &key, alg).ok();
    let paired = probe.is_some_and(|sig| {
        jsonwebtoken::crypto::verify(&sig, b"ringgate key check", &decoding, alg).unwrap_or(false)
    });
    if !paired {
        c.error(&p.key("public_key_file"), "does not match the signing key");
        return None;
    }
    let lifetime = raw.lifetime.0.as_secs();
    if !(60..=86_400).contains(&lifetime) {
        c.error(&p.key("lifetime"), "must be between 1m and 24h");
    }
    let jwk = public_jwk(alg, decoding.as_bytes(), &raw.kid);
    let jwks = serde_json::json!({ "keys": jwk.into_iter().collect::<Vec<_>>() }).to_string();
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for (i, rc) in auth.clients.iter().enumerate() {
        let cp = KeyPath::root().key("auth").key("clients").index(i);
        if rc.id.is_empty() || rc.id.contains(':') || !ids.insert(rc.id.as_str()) {
            c.error(
                &cp.key("id"),
                format!("empty, duplicate or with ':' {:?}", rc.id),
            );
        }
        match parse_hash(&rc.secret_hash) {
            Some(secret_hash) => clients.push(TokenClient {
                id: rc.id.as_str().into(),
                secret_hash,
                scopes: rc.scopes.iter().map(|s| s.as_str().into()).collect(),
            }),
            None => c.error(
                &cp.key("secret_hash"),
                "not \"sha256:<64 hex digits>\" (see `ringgate hash-key`)",
            ),
        }
    }
    let issuer = Issuer {
        name: GATEWAY_ISSUER.into(),
        iss: Some(raw.issuer.clone()),
        audiences: raw.audience.iter().cloned().collect(),
        algorithms: vec![alg],
        keys: KeySet::new(vec![Key {
            kid: Some(raw.kid.clone()),
            key: decoding,
            alg: Some(alg),
        }]),
        leeway: 60,
        max_token_bytes: 8 * 1024,
        groups_claim: "groups".into(),
        remote: None,
    };
    Some((
        TokenIssuer {
            iss: raw.issuer.clone(),
            audience: raw.audience.clone(),
            alg,
            kid: raw.kid.clone(),
            key,
            jwks,
            lifetime,
            clients,
        },
        issuer,
    ))
}

fn issuer(c: &mut Checker<'_>, p: &KeyPath, raw: &RawIssuer, dir: &Path) -> Issuer {
    let mut algorithms = Vec::new();
    for (i, a) in raw.algorithms.iter().enumerate() {
        match a.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => c.error(
                &p.key("algorithms").index(i),
                format!("{a:?} is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA"),
            ),
        }
    }
    if raw.algorithms.is_empty() {
        c.error(&p.key("algorithms"), "name at least one algorithm");
    }
    let families: Vec<AlgorithmFamily> = algorithms.iter().map(|&a| family_of(a)).collect();
    let mut keys = Vec::new();
    for (i, pk) in raw.pem_files.iter().enumerate() {
        let kp = p.key("pem_files").index(i).key("file");
        let path = dir.join(&pk.file);
        let pem = match std::fs::read(&path) {
            Ok(pem) => pem,
            Err(e) => {
                c.error(&kp, format!("{}: {e}", path.display()));
                continue;
            }
        };
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem));
        match key {
            Ok(key) if families.contains(&key.family()) => keys.push(Key {
                kid: pk.kid.clone(),
                key,
                alg: None,
            }),
            Ok(_) => c.error(&kp, "no configured algorithm uses this kind of key"),
            Err(_) => c.error(
                &kp,
                format!(
                    "{}: not a PEM public key (RSA, EC or Ed25519)",
                    path.display()
                ),
            ),
        }
    }
    let mut jwks = |c: &mut Checker<'_>, kp: KeyPath, text: &[u8]| match parse_jwks(text) {
        Ok((found, _skipped)) if found.is_empty() => {
            c.error(&kp, "the JWKS holds no usable signing key");
        }
        Ok((found, _)) => keys.extend(found),
        Err(e) => c.error(&kp, e),
    };
    if let Some(f) = &raw.jwks_file {
        let path = dir.join(f);
        match std::fs::read(&path) {
            Ok(text) => jwks(c, p.key("jwks_file"), &text),
            Err(e) => c.error(&p.key("jwks_file"), format!("{}: {e}", path.display())),
        }
    }
    if let Some(text) = &raw.jwks {
        jwks(c, p.key("jwks"), text.as_bytes());
    }
    if let Some(f) = &raw.hmac_secret_file {
        let path = dir.join(f);
        match std::fs::read(&path) {
            Ok(mut secret) => {
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < MIN_HMAC_SECRET {
                    c.error(
                        &p.key("hmac_secret_file"),
                        format!("the secret must be at least {MIN_HMAC_SECRET} bytes"),
                    );
                } else if !families.contains(&AlgorithmFamily::Hmac) {
                    c.error(
                        &p.key("hmac_secret_file"),
                        "no HS256/384/512 algorithm is configured for this secret",
                    );
                } else {
                    keys.push(Key {
                        kid: None,
                        key: DecodingKey::from_secret(&secret),
                        alg: None,
                    });
                }
            }
            Err(e) => c.error(
                &p.key("hmac_secret_file"),
                format!("{}: {e}", path.display()),
            ),
        }
    }
    // HMAC keys from a JWKS are as sensitive to length as files.
    if keys.iter().any(|k| {
        k.key.family() == AlgorithmFamily::Hmac && k.key.as_bytes().len() < MIN_HMAC_SECRET
    }) {
        c.error(
            &p.key("jwks"),
            format!("an HMAC key is shorter than {MIN_HMAC_SECRET} bytes"),
        );
    }
    let remote = remote_source(c, p, raw);
    let no_source = raw.pem_files.is_empty()
        && raw.jwks_file.is_none()
        && raw.jwks.is_none()
        && raw.hmac_secret_file.is_none()
        && remote.is_none();
    if no_source {
        c.error(
            &p.key("name"),
            "no keys: set pem_files, jwks_file, jwks, hmac_secret_file, jwks_url or discovery",
        );
    }
    if raw.max_token_bytes.0 < 64 || raw.max_token_bytes.0 > 64 * 1024 {
        c.error(
            &p.key("max_token_bytes"),
            "must be between 64 and 65536 bytes",
        );
    }
    Issuer {
        name: raw.name.as_str().into(),
        iss: raw.issuer.clone(),
        audiences: raw.audiences.clone(),
        algorithms,
        keys: KeySet::new(keys),
        leeway: raw.leeway.0.as_secs(),
        max_token_bytes: raw.max_token_bytes.0 as usize,
        groups_claim: raw.groups_claim.as_str().into(),
        remote,
    }
}

fn remote_source(c: &mut Checker<'_>, p: &KeyPath, raw: &RawIssuer) -> Option<RemoteSource> {
    let is_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    let source = match (&raw.jwks_url, &raw.discovery) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            c.error(&p.key("discovery"), "set jwks_url or discovery, not both");
            return None;
        }
        (Some(u), None) if is_url(u) => KeySource::Jwks(u.clone()),
        (None, Some(u)) if is_url(u) => KeySource::Discovery(u.clone()),
        (Some(_), None) => {
            c.error(&p.key("jwks_url"), "must be an http:// or https:// URL");
            return None;
        }
        (None, Some(_)) => {
            c.error(&p.key("discovery"), "must be an http:// or https:// URL");
            return None;
        }
    };
    let secs = |d: &crate::config::units::Duration| d.0;
    if secs(&raw.refresh) < std::time::Duration::from_secs(10) {
        c.error(&p.key("refresh"), "must be at least 10s");
    }
    if secs(&raw.refetch_min_interval) < std::time::Duration::from_secs(1) {
        c.error(&p.key("refetch_min_interval"), "must be at least 1s");
    }
    if raw.fetch_timeout.0.is_zero() || raw.fetch_timeout.0 > std::time::Duration::from_secs(60) {
        c.error(&p.key("fetch_timeout"), "must be between 1ms and 60s");
    }
    Some(RemoteSource {
        issuer: raw.name.as_str().into(),
        source,
        expected_issuer: raw.issuer.clone(),
        refresh: raw.refresh.0,
        refetch_min: raw.refetch_min_interval.0,
        timeout: raw.fetch_timeout.0.max(std::time::Duration::from_millis(1)),
    })
}

pub(super) fn route_auth(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawRouteAuth,
    auth: &AuthConfig,
) -> RouteAuth {
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().enumerate() {
        let mp = p.key("methods").index(i);
        match m.as_str() {
            "api_key" if auth.api_keys.is_empty() => {
                c.error(&mp, "api_key needs [[auth.consumers]] with keys");
            }
            "api_key" => methods.push(Method::ApiKey),
            "mtls" => methods.push(Method::Mtls),
            "jwt" if auth.issuers.is_empty() => c.error(&mp, "jwt needs an [[auth.jwt]] issuer"),
            "jwt" => methods.push(Method::Jwt(None)),
            other => {
                let issuer = other
                    .strip_prefix("jwt:")
                    .and_then(|n| auth.issuers.iter().position(|i| &*i.name == n));
                let endpoint = other
                    .strip_prefix("introspection:")
                    .and_then(|n| auth.introspection.iter().position(|e| &*e.name == n));
                match (issuer, endpoint) {
                    (Some(i), _) => methods.push(Method::Jwt(Some(i))),
                    (_, Some(e)) => methods.push(Method::Introspection(e)),
                    _ => c.error(
                        &mp,
                        format!("{other:?} is not \"api_key\", \"jwt\", \"jwt:<issuer name>\", \"introspection:<endpoint name>\" or \"mtls\""),
                    ),
                }
            }
        }
    }
    if raw.methods.is_empty() {
        c.error(&p.key("methods"), "name at least one method");
    }
    let mut claims = Vec::new();
    for (i, rule) in raw.claims.iter().enumerate() {
        let name: Box<str> = rule.name.as_str().into();
        match (&rule.equals, &rule.contains) {
            (Some(v), None) => claims.push(ClaimRule::Equals(name, v.as_str().into())),
            (None, Some(v)) => claims.push(ClaimRule::Contains(name, v.as_str().into())),
            _ => c.error(
                &p.key("claims").index(i),
                "set exactly one of equals and contains",
            ),
        }
    }
    let mut forward = Vec::new();
    let mut strip: Vec<Box<[u8]>> = Vec::new();
    for (header, source) in &raw.forward {
        let fp = p.key("forward").key(header);
        if !is_token(header) {
            c.error(&fp, "not a header name");
            continue;
        }
        let source = match source.as_str() {
            "subject" => Source::Subject,
            "consumer" => Source::Consumer,
            "issuer" => Source::Issuer,
            "scopes" => Source::Scopes,
            "groups" => Source::Groups,
            s => match s.strip_prefix("claim:").filter(|n| !n.is_empty()) {
                Some(n) => Source::Claim(n.into()),
                None => {
                    c.error(
                        &fp,
                        format!("{s:?} is not subject, consumer, issuer, scopes, groups or claim:<name>"),
                    );
                    continue;
                }
            },
        };
        let name: Box<[u8]> = header.to_ascii_lowercase().into_bytes().into();
        strip.push(name.clone());
        forward.push((name, source));
    }
    let name_of = |rest: &str| -> Box<[u8]> { rest.as_bytes().into() };
    let token = match raw.token_from.split_once(':') {
        None if raw.token_from == "bearer" => TokenSource::Bearer,
        Some(("header", n)) if is_token(n) => {
            TokenSource::Header(n.to_ascii_lowercase().into_bytes().into())
        }
        Some(("cookie", n)) if is_token(n) => TokenSource::Cookie(name_of(n)),
        Some(("query", n))
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"&=#?".contains(&b)) =>
        {
            TokenSource::Query(name_of(n))
        }
        _ => {
            c.error(
                &p.key("token_from"),
                format!("{:?} is not \"bearer\", \"header:<name>\", \"cookie:<name>\" or \"query:<name>\"", raw.token_from),
            );
            TokenSource::Bearer
        }
    };
    let (mut strip_cookie, mut strip_query) = (None, None);
    if !raw.forward_credentials {
        if methods
            .iter()
            .any(|m| matches!(m, Method::Jwt(_) | Method::Introspection(_)))
        {
            match &token {
                TokenSource::Bearer => strip.push(b"authorization"[..].into()),
                TokenSource::Header(n) => strip.push(n.clone()),
                TokenSource::Cookie(n) => strip_cookie = Some(n.clone()),
                TokenSource::Query(n) => strip_query = Some(n.clone()),
            }
        }
        if methods.contains(&Method::ApiKey) {
            strip.push(auth.api_key_header.clone());
        }
    }
    RouteAuth {
        methods: methods.into(),
        token,
        strip_cookie,
        strip_query,
        scopes: raw.scopes.iter().map(|s| s.as_str().into()).collect(),
        groups: raw.groups.iter().map(|s| s.as_str().into()).collect(),
        claims: claims.into(),
        forward: forward.into(),
        strip: strip.into(),
    }
}

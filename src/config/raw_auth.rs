//! `[auth]` and a route's `auth` table as serde reads them.

use serde::Deserialize;

use super::defaults as d;
use super::units::{ByteSize, Duration};

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Verified tokens cached per worker.
    #[serde(default = "d::auth_cache_entries")]
    pub cache_entries: u32,
    /// Header carrying API keys.
    #[serde(default = "d::api_key_header")]
    pub api_key_header: String,
    #[serde(default)]
    pub jwt: Vec<RawIssuer>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    /// The client-credentials token endpoint.
    pub token_endpoint: Option<RawTokenEndpoint>,
    /// Clients of the token endpoint.
    #[serde(default)]
    pub clients: Vec<RawTokenClient>,
    /// OAuth2 token introspection endpoints.
    #[serde(default)]
    pub introspection: Vec<RawIntrospection>,
    /// Threads making introspection calls; read at start only.
    #[serde(default = "d::introspection_threads")]
    pub introspection_threads: u32,
}

/// `[[auth.introspection]]`: an RFC 7662 endpoint for opaque tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    pub name: String,
    pub url: String,
    pub client_id: String,
    /// A file holding the client secret.
    pub client_secret_file: String,
    /// Bound on one call; a request waits at most this long (plus queueing).
    #[serde(default = "d::introspection_timeout")]
    pub timeout: Duration,
    /// Longest an active answer is reused (also bounded by its `exp`).
    #[serde(default = "d::introspection_max_ttl")]
    pub cache_max_ttl: Duration,
    /// How long an inactive answer is reused.
    #[serde(default = "d::introspection_negative_ttl")]
    pub negative_ttl: Duration,
    #[serde(default = "d::jwt_max_token_bytes")]
    pub max_token_bytes: ByteSize,
    #[serde(default = "d::jwt_groups_claim")]
    pub groups_claim: String,
}

/// `[auth.token_endpoint]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenEndpoint {
    /// `iss` of the tokens issued.
    pub issuer: String,
    pub audience: Option<String>,
    /// "ES256" or "EdDSA".
    pub algorithm: String,
    /// PKCS#8 PEM private key.
    pub signing_key_file: String,
    /// Its public key, PEM.
    pub public_key_file: String,
    pub kid: String,
    #[serde(default = "d::token_lifetime")]
    pub lifetime: Duration,
}

/// `[[auth.clients]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenClient {
    pub id: String,
    /// `sha256:<hex>` of the client secret (`ringgate hash-key`).
    pub secret_hash: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            cache_entries: d::auth_cache_entries(),
            api_key_header: d::api_key_header(),
            jwt: Vec::new(),
            consumers: Vec::new(),
            token_endpoint: None,
            clients: Vec::new(),
            introspection: Vec::new(),
            introspection_threads: d::introspection_threads(),
        }
    }
}

/// `[[auth.jwt]]`: one token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: String,
    /// `iss` must equal this when set.
    pub issuer: Option<String>,
    /// `aud` must contain one of these when set.
    #[serde(default)]
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    /// PEM public keys (RSA, EC or Ed25519), optionally with a `kid`.
    #[serde(default)]
    pub pem_files: Vec<RawPemKey>,
    /// A JWKS document in a file.
    pub jwks_file: Option<String>,
    /// A JWKS document inline.
    pub jwks: Option<String>,
    /// A file holding an HMAC secret (at least 32 bytes).
    pub hmac_secret_file: Option<String>,
    /// A JWKS URL, fetched in the background.
    pub jwks_url: Option<String>,
    /// An issuer URL whose OIDC discovery document names the JWKS.
    pub discovery: Option<String>,
    /// Remote keys are refreshed this often unless the response's max-age
    /// says otherwise.
    #[serde(default = "d::jwks_refresh")]
    pub refresh: Duration,
    /// Least time between two fetches (unknown-kid refetches, retries).
    #[serde(default = "d::jwks_refetch_min")]
    pub refetch_min_interval: Duration,
    /// Bound on one fetch.
    #[serde(default = "d::jwks_fetch_timeout")]
    pub fetch_timeout: Duration,
    #[serde(default = "d::jwt_leeway")]
    pub leeway: Duration,
    #[serde(default = "d::jwt_max_token_bytes")]
    pub max_token_bytes: ByteSize,
    #[serde(default = "d::jwt_groups_claim")]
    pub groups_claim: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPemKey {
    pub file: String,
    pub kid: Option<String>,
}

/// `[[auth.consumers]]`: who API keys belong to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// `sha256:<hex>`, as `ringgate hash-key` prints it.
    pub hash: String,
    /// RFC 3339 times.
    pub not_before: Option<String>,
    pub expires: Option<String>,
}

/// A route's `auth` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteAuth {
    /// "jwt" (any issuer), "jwt:<issuer>", "api_key",
    /// "introspection:<endpoint>"; any one suffices.
    pub methods: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub claims: Vec<RawClaimRule>,
    /// Upstream header name -> "subject", "consumer", "issuer", "scopes",
    /// "groups" or "claim:<name>".
    #[serde(default)]
    pub forward: std::collections::BTreeMap<String, String>,
    /// Pass `Authorization` / the API key header on to the upstream.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Where JWTs are: "bearer", "header:<name>", "cookie:<name>" or
    /// "query:<name>".
    #[serde(default = "d::token_from")]
    pub token_from: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimRule {
    pub name: String,
    pub equals: Option<String>,
    pub contains: Option<String>,
}

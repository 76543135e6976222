//! Authentication and authorization: who a request is from, and whether
//! that principal may use the route.
//!
//! - `jwt.rs`: token verification against configured issuers and keys.
//! - `apikey.rs`: consumers and their hashed API keys.
//! - `jwks.rs`: remote keys (JWKS URLs, OIDC discovery) on a background
//!   thread.
//! - `token_endpoint.rs`: the OAuth2 client-credentials token endpoint.
//! - `introspect.rs`: OAuth2 token introspection (RFC 7662) for opaque
//!   tokens, on a small pool of threads.
//! - this file: the per-route policy ([`RouteAuth`]), the [`Identity`] a
//!   successful method yields, the authorization checks, identity headers
//!   for the upstream, and the per-worker token caches.
//!
//! A route's `methods` are tried in order and the first whose credential
//! is present and valid wins (any-of). No credential at all is 401 without
//! an error code (RFC 6750 3.1); a credential that fails is 401
//! `invalid_token`; a valid one without the route's scopes, groups or
//! claims is 403 `insufficient_scope`. The reason goes to the audit log;
//! the response says only which of the three it was.

pub mod apikey;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod token_endpoint;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{mpsc, Arc};

use serde_json::{Map, Value};

use crate::http::head::RequestView;
use apikey::{ApiKeys, Consumer};
use jwt::{Issuer, KeySet};

/// Three counters per configured name (issuer, endpoint), kept by a
/// background thread and read by the admin thread.
pub type NamedFigures = std::sync::Mutex<std::collections::BTreeMap<Box<str>, (u64, u64, u64)>>;

/// Who a verified token says the request is from.
#[derive(Debug)]
pub struct Principal {
    /// `sub` (empty when the token has none).
    pub subject: Box<str>,
    /// The configured issuer's name.
    pub issuer: Box<str>,
    /// From `scope` (space-separated) or `scp` (array or string).
    pub scopes: Box<[Box<str>]>,
    /// From the issuer's `groups_claim`.
    pub groups: Box<[Box<str>]>,
    pub claims: Map<String, Value>,
}

fn strings(v: Option<&Value>) -> Box<[Box<str>]> {
    match v {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(Into::into).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(Into::into)
            .collect(),
        _ => Box::new([]),
    }
}

impl Principal {
    pub fn from_claims(claims: Map<String, Value>, groups_claim: &str, issuer: &str) -> Principal {
        let scopes = match claims.get("scope") {
            Some(v) => strings(Some(v)),
            None => strings(claims.get("scp")),
        };
        Principal {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            issuer: issuer.into(),
            scopes,
            groups: strings(claims.get(groups_claim)),
            claims,
        }
    }
}

/// The authenticated caller of one request.
pub enum Identity<'a> {
    Token(Rc<Principal>),
    Consumer(&'a Consumer),
}

impl Identity<'_> {
    pub fn subject(&self) -> &str {
        match self {
            Identity::Token(p) => &p.subject,
            Identity::Consumer(c) => &c.id,
        }
    }

    pub fn consumer(&self) -> Option<&str> {
        match self {
            Identity::Token(_) => None,
            Identity::Consumer(c) => Some(&c.id),
        }
    }

    fn scopes(&self) -> &[Box<str>] {
        match self {
            Identity::Token(p) => &p.scopes,
            Identity::Consumer(c) => &c.scopes,
        }
    }

    fn groups(&self) -> &[Box<str>] {
        match self {
            Identity::Token(p) => &p.groups,
            Identity::Consumer(c) => &c.groups,
        }
    }

    fn claim(&self, name: &str) -> Option<&Value> {
        match self {
            Identity::Token(p) => p.claims.get(name),
            Identity::Consumer(_) => None,
        }
    }
}

/// `[auth]`: issuers, consumers and shared settings.
#[derive(Default)]
pub struct AuthConfig {
    pub issuers: Vec<Issuer>,
    pub api_keys: ApiKeys,
    /// Lowercase name of the header carrying API keys.
    pub api_key_header: Box<[u8]>,
    /// Verified tokens cached per worker.
    pub cache_entries: usize,
    /// The client-credentials token endpoint, when configured.
    pub token: Option<token_endpoint::TokenIssuer>,
    /// Introspection endpoints, by route methods' index.
    pub introspection: Vec<Arc<introspect::Endpoint>>,
    /// Threads making introspection calls (fixed at start).
    pub introspection_threads: usize,
}

impl std::fmt::Debug for AuthConfig {
    /// Names and counts only: keys stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "issuers",
                &self.issuers.iter().map(|i| &*i.name).collect::<Vec<_>>(),
            )
            .field("consumers", &self.api_keys.consumers.len())
            .finish_non_exhaustive()
    }
}

/// One way a route accepts credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A bearer JWT from one issuer (index into `AuthConfig::issuers`), or
    /// from any configured issuer.
    Jwt(Option<usize>),
    ApiKey,
    /// An opaque bearer token, introspected at this endpoint (index into
    /// `AuthConfig::introspection`).
    Introspection(usize),
    /// The client certificate verified by the TLS handshake.
    Mtls,
}

/// What a forwarded identity header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Subject,
    Consumer,
    Issuer,
    Scopes,
    Groups,
    Claim(Box<str>),
}

/// A claim condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRule {
    /// The claim is this string (or a number or boolean written so).
    Equals(Box<str>, Box<str>),
    /// The claim is an array holding this string, or a space-separated
    /// string holding it as one word.
    Contains(Box<str>, Box<str>),
}

/// Where a route looks for a bearer JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The whole value of this (lowercase) header.
    Header(Box<[u8]>),
    /// This cookie of the `Cookie` header.
    Cookie(Box<[u8]>),
    /// This query parameter (raw name); opt-in, as URLs end up in logs.
    Query(Box<[u8]>),
}

/// The cookie `name` of the request's `Cookie` fields.
pub fn cookie<'b>(req: &RequestView<'b>, name: &[u8]) -> Option<&'b [u8]> {
    req.head
        .headers
        .iter()
        .filter(|h| h.name.get(req.buf).eq_ignore_ascii_case(b"cookie"))
        .flat_map(|h| h.value.get(req.buf).split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (k == name).then_some(&v[1..])
        })
}

/// The query parameter `name` (raw bytes) of `query` (with its `?`).
pub fn query_param<'b>(query: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    query
        .strip_prefix(b"?")
        .unwrap_or(query)
        .split(|&b| b == b'&')
        .find_map(|pair| {
            let at = pair.iter().position(|&b| b == b'=')?;
            (&pair[..at] == name).then_some(&pair[at + 1..])
        })
}

impl TokenSource {
    fn token<'b>(&self, req: &RequestView<'b>) -> Option<&'b [u8]> {
        let found = match self {
            TokenSource::Bearer => bearer(req),
            TokenSource::Header(n) => req.header(n).map(<[u8]>::trim_ascii),
            TokenSource::Cookie(n) => cookie(req, n),
            TokenSource::Query(n) => query_param(req.query(), n),
        };
        found.filter(|t| !t.is_empty())
    }
}

/// A route's `auth` table.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    pub methods: Box<[Method]>,
    /// Where JWTs are looked for.
    pub token: TokenSource,
    /// Cookie and query parameter removed before forwarding (the token's,
    /// unless `forward_credentials`).
    pub strip_cookie: Option<Box<[u8]>>,
    pub strip_query: Option<Box<[u8]>>,
    /// All required.
    pub scopes: Box<[Box<str>]>,
    /// Any one required.
    pub groups: Box<[Box<str>]>,
    pub claims: Box<[ClaimRule]>,
    /// Identity headers for the upstream: lowercase name and source.
    pub forward: Box<[(Box<[u8]>, Source)]>,
    /// Request header names never passed upstream on this route: the
    /// forwarded identity names (a client's copies would be spoofs) and,
    /// unless `forward_credentials`, the credential headers.
    pub strip: Box<[Box<[u8]>]>,
}

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: no credential for any of the route's methods.
    Missing,
    /// 401 `invalid_token`, with the audit reason.
    Invalid(&'static str),
    /// 403 `insufficient_scope`, with the audit reason.
    Forbidden(&'static str),
}

impl Denied {
    pub fn reason(self) -> &'static str {
        match self {
            Denied::Missing => "missing_credentials",
            Denied::Invalid(r) | Denied::Forbidden(r) => r,
        }
    }

    /// The `WWW-Authenticate` field (RFC 6750 3).
    pub fn challenge(self, route: &RouteAuth, out: &mut Vec<u8>) {
        out.extend_from_slice(b"www-authenticate: Bearer realm=\"ringgate\"");
        match self {
            Denied::Missing => {}
            Denied::Invalid(_) => out.extend_from_slice(
                b", error=\"invalid_token\", error_description=\"the access token is invalid\"",
            ),
            Denied::Forbidden(_) => {
                out.extend_from_slice(b", error=\"insufficient_scope\"");
                if !route.scopes.is_empty() {
                    out.extend_from_slice(b", scope=\"");
                    for (i, s) in route.scopes.iter().enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(s.as_bytes());
                    }
                    out.push(b'"');
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The credentials of `Authorization` under `scheme` (case-insensitive),
/// if the field uses that scheme and carries any.
pub fn authorization<'b>(req: &RequestView<'b>, scheme: &[u8]) -> Option<&'b [u8]> {
    let v = req.header(b"authorization")?;
    let (used, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    used.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The bearer token of `Authorization`, if any.
pub fn bearer<'b>(req: &RequestView<'b>) -> Option<&'b [u8]> {
    authorization(req, b"bearer")
}

/// Writes `words` separated by single spaces.
fn join_words<'w>(out: &mut Vec<u8>, words: impl Iterator<Item = &'w str>) {
    for (i, w) in words.enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(w.as_bytes());
    }
}

/// A cached JWT verification.
#[derive(Clone)]
struct Verified {
    issuer: usize,
    key_set: u64,
    principal: Rc<Principal>,
}

/// An introspection answer: the endpoint's id, and the principal of an
/// active token (`None`: inactive).
#[derive(Clone)]
pub struct Introspected {
    endpoint: u64,
    principal: Option<Rc<Principal>>,
}

impl Introspected {
    fn identity<'a>(&self) -> Result<Identity<'a>, &'static str> {
        match &self.principal {
            Some(p) => Ok(Identity::Token(p.clone())),
            None => Err("inactive_token"),
        }
    }
}

/// Per-worker authentication state: the verified-token and introspection
/// caches, the remote key sets by issuer name, where to ask for a refetch
/// and where to send tokens to introspect.
pub struct AuthState {
    cache: RefCell<TokenCache<Verified>>,
    introspected: RefCell<TokenCache<Introspected>>,
    remote: RefCell<HashMap<Box<str>, Arc<KeySet>>>,
    refetch: RefCell<Option<mpsc::SyncSender<jwks::FetchMsg>>>,
    introspector: RefCell<Option<async_channel::Sender<introspect::Job>>>,
    pub hits: Cell<u64>,
    pub misses: Cell<u64>,
}

impl AuthState {
    pub fn new(entries: usize, seed: u64) -> AuthState {
        AuthState {
            cache: RefCell::new(TokenCache::new(entries, seed)),
            introspected: RefCell::new(TokenCache::new(entries, seed.rotate_left(17))),
            remote: RefCell::new(HashMap::new()),
            refetch: RefCell::new(None),
            introspector: RefCell::new(None),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    pub fn set_introspector(&self, tx: async_channel::Sender<introspect::Job>) {
        *self.introspector.borrow_mut() = Some(tx);
    }

    /// Asks the introspection pool about `token`, waiting at most the
    /// endpoint's timeout (plus a second of queueing), and caches the
    /// answer. `Err` with the audit reason when no answer came (503).
    pub async fn introspect(
        &self,
        endpoint: &Arc<introspect::Endpoint>,
        token: &str,
        now: u64,
    ) -> Result<Introspected, &'static str> {
        use introspect::{Answer, Job};
        let jobs = self
            .introspector
            .borrow()
            .clone()
            .ok_or("introspection_unavailable")?;
        let (reply, answer) = async_channel::bounded(1);
        let job = Job {
            endpoint: endpoint.clone(),
            token: token.into(),
            now,
            reply,
        };
        // A full queue means the endpoint is not keeping up: refuse now
        // rather than queue without bound.
        jobs.try_send(job).map_err(|_| "introspection_busy")?;
        let wait = endpoint.timeout + std::time::Duration::from_secs(1);
        let answer = match monoio::time::timeout(wait, answer.recv()).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err("introspection_unavailable"),
            Err(_) => return Err("introspection_timeout"),
        };
        let (until, principal) = match answer {
            Answer::Active(claims, until) => {
                let mut p = Principal::from_claims(claims, &endpoint.groups_claim, &endpoint.name);
                if p.subject.is_empty() {
                    // RFC 7662 2.2: a client's own token may name no user.
                    if let Some(Value::String(c)) = p.claims.get("client_id") {
                        p.subject = c.as_str().into();
                    }
                }
                (until, Some(Rc::new(p)))
            }
            Answer::Inactive(until) => (until, None),
            Answer::Failed(why) => return Err(why),
        };
        let entry = Introspected {
            endpoint: endpoint.id,
            principal,
        };
        self.introspected
            .borrow_mut()
            .put(token.as_bytes(), until, entry.clone());
        Ok(entry)
    }

    /// Installs an issuer's newly fetched keys.
    pub fn set_keys(&self, issuer: &str, keys: Arc<KeySet>) {
        self.remote.borrow_mut().insert(issuer.into(), keys);
    }

    pub fn set_refetch(&self, tx: mpsc::SyncSender<jwks::FetchMsg>) {
        *self.refetch.borrow_mut() = Some(tx);
    }
}

/// The outcome of [`check`].
pub enum Checked<'a> {
    Done(Result<Identity<'a>, Denied>),
    /// The token must be introspected at this endpoint first (then call
    /// [`check`] again with the answer).
    Introspect(usize, Box<str>),
}

/// Authenticates and authorizes one request at `now` (seconds since the
/// epoch). `fresh` holds the introspection answers just received, by
/// endpoint index; `client_cert` the connection's verified client
/// certificate.
pub fn check<'a>(
    route: &RouteAuth,
    cfg: &'a AuthConfig,
    req: &RequestView<'_>,
    now: u64,
    state: &AuthState,
    fresh: &[(usize, Introspected)],
    client_cert: Option<&Rc<Principal>>,
) -> Checked<'a> {
    let mut failure: Option<&'static str> = None;
    let mut identity = None;
    for &method in route.methods.iter() {
        let result = match method {
            Method::Jwt(issuer) => match route.token.token(req) {
                None => continue,
                Some(token) => verify_token(cfg, issuer, token, now, state),
            },
            Method::Introspection(e) => match route.token.token(req) {
                None => continue,
                Some(token) => match fresh.iter().find(|(f, _)| *f == e) {
                    Some((_, answer)) => answer.identity(),
                    None => match introspected(cfg, e, token, now, state) {
                        Ok(Some(answer)) => answer.identity(),
                        Ok(None) => {
                            // a valid token68 is ASCII
                            let token = std::str::from_utf8(token).unwrap_or_default();
                            return Checked::Introspect(e, token.into());
                        }
                        Err(reason) => Err(reason),
                    },
                },
            },
            Method::Mtls => match client_cert {
                None => continue,
                Some(p) => Ok(Identity::Token(p.clone())),
            },
            Method::ApiKey => match req.header(&cfg.api_key_header) {
                None => continue,
                Some(key) => cfg
                    .api_keys
                    .lookup(key, now)
                    .map(Identity::Consumer)
                    .map_err(apikey::KeyReject::as_str),
            },
        };
        match result {
            Ok(id) => {
                identity = Some(id);
                break;
            }
            Err(reason) => {
                failure.get_or_insert(reason);
            }
        }
    }
    let identity = match (identity, failure) {
        (Some(id), _) => id,
        (None, Some(reason)) => return Checked::Done(Err(Denied::Invalid(reason))),
        (None, None) => return Checked::Done(Err(Denied::Missing)),
    };
    Checked::Done(authorize(route, &identity).map(|()| identity))
}

/// The cached introspection answer for `token` at endpoint `e`: `Ok(None)`
/// when the endpoint must be asked, `Err` when the token is refused
/// without asking.
fn introspected(
    cfg: &AuthConfig,
    e: usize,
    token: &[u8],
    now: u64,
    state: &AuthState,
) -> Result<Option<Introspected>, &'static str> {
    let endpoint = cfg.introspection.get(e).ok_or("no_endpoint")?;
    if token.len() > endpoint.max_token_bytes {
        return Err("oversized_token");
    }
    // RFC 6750 2.1 b64token: anything else is not sent on.
    let b64token = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(b);
    if !token.iter().all(b64token) {
        return Err("malformed_token");
    }
    let cache = state.introspected.borrow();
    match cache.get(token, now) {
        Some(hit) if hit.endpoint == endpoint.id => {
            state.hits.set(state.hits.get() + 1);
            Ok(Some(hit.clone()))
        }
        _ => {
            state.misses.set(state.misses.get() + 1);
            Ok(None)
        }
    }
}

/// A bearer token against one issuer (`Some(index)`) or all of them,
/// through the worker's cache.
pub fn verify_token<'a>(
    cfg: &'a AuthConfig,
    issuer: Option<usize>,
    token: &[u8],
    now: u64,
    state: &AuthState,
) -> Result<Identity<'a>, &'static str> {
    let mut cache = state.cache.borrow_mut();
    let remote = state.remote.borrow();
    let remote_of = |i: &Issuer| {
        i.remote
            .as_ref()
            .and_then(|_| remote.get(&i.name))
            .map(|k| &**k)
    };
    if let Some(hit) = cache.get(token, now) {
        let current = cfg.issuers.get(hit.issuer).is_some_and(|i| {
            i.keys.id == hit.key_set || remote_of(i).is_some_and(|k| k.id == hit.key_set)
        });
        if issuer.is_none_or(|i| i == hit.issuer) && current {
            state.hits.set(state.hits.get() + 1);
            return Ok(Identity::Token(hit.principal.clone()));
        }
    }
    state.misses.set(state.misses.get() + 1);
    let candidates = match issuer {
        Some(i) => i..i + 1,
        None => 0..cfg.issuers.len(),
    };
    let mut first_error = None;
    for idx in candidates {
        let Some(iss) = cfg.issuers.get(idx) else {
            continue;
        };
        match iss.verify(token, now, remote_of(iss)) {
            Ok(v) => {
                let principal = Rc::new(v.principal);
                cache.put(
                    token,
                    v.exp.saturating_add(iss.leeway),
                    Verified {
                        issuer: idx,
                        key_set: v.key_set,
                        principal: principal.clone(),
                    },
                );
                return Ok(Identity::Token(principal));
            }
            Err(e) => {
                if e == jwt::Reject::UnknownKey && iss.remote.is_some() {
                    // Perhaps rotated: ask for the keys again (rate-limited
                    // by the fetch thread); this request does not wait.
                    if let Some(tx) = state.refetch.borrow().as_ref() {
                        let _ = tx.try_send(jwks::FetchMsg::Refetch(iss.name.clone()));
                    }
                }
                first_error.get_or_insert(e.as_str());
            }
        }
    }
    Err(first_error.unwrap_or("no_issuer"))
}

fn authorize(route: &RouteAuth, id: &Identity<'_>) -> Result<(), Denied> {
    let has = |list: &[Box<str>], want: &str| list.iter().any(|s| &**s == want);
    if !route.scopes.iter().all(|s| has(id.scopes(), s)) {
        return Err(Denied::Forbidden("missing_scope"));
    }
    if !route.groups.is_empty() && !route.groups.iter().any(|g| has(id.groups(), g)) {
        return Err(Denied::Forbidden("missing_group"));
    }
    for rule in route.claims.iter() {
        let ok = match rule {
            ClaimRule::Equals(name, want) => match id.claim(name) {
                Some(Value::String(s)) => s == &**want,
                Some(Value::Bool(b)) => **want == *if *b { "true" } else { "false" },
                Some(Value::Number(n)) => n.as_f64() == want.parse::<f64>().ok(),
                _ => false,
            },
            ClaimRule::Contains(name, want) => match id.claim(name) {
                Some(Value::Array(list)) => list.iter().any(|v| v.as_str() == Some(want)),
                Some(Value::String(s)) => s.split_ascii_whitespace().any(|w| w == &**want),
                _ => false,
            },
        };
        if !ok {
            return Err(Denied::Forbidden("claim_mismatch"));
        }
    }
    Ok(())
}

impl RouteAuth {
    /// Appends the identity header lines for the upstream. A value that is
    /// not a clean field value (control characters, CR/LF) is left out.
    pub fn render_forward(&self, id: &Identity<'_>, out: &mut Vec<u8>) {
        for (name, source) in self.forward.iter() {
            let start = out.len();
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            let value_start = out.len();
            match source {
                Source::Subject => out.extend_from_slice(id.subject().as_bytes()),
                Source::Consumer => out.extend_from_slice(id.consumer().unwrap_or("").as_bytes()),
                Source::Issuer => match id {
                    Identity::Token(p) => out.extend_from_slice(p.issuer.as_bytes()),
                    Identity::Consumer(_) => {}
                },
                Source::Scopes => join_words(out, id.scopes().iter().map(|s| &**s)),
                Source::Groups => join_words(out, id.groups().iter().map(|s| &**s)),
                Source::Claim(c) => match id.claim(c) {
                    Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                        out.extend_from_slice(v.to_string().as_bytes());
                    }
                    Some(Value::Array(list)) => {
                        join_words(out, list.iter().filter_map(Value::as_str));
                    }
                    _ => {}
                },
            }
            let value = &out[value_start..];
            let clean = !value.is_empty()
                && value
                    .iter()
                    .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
            if clean {
                out.extend_from_slice(b"\r\n");
            } else {
                out.truncate(start);
            }
        }
    }

    /// Whether the upstream request must not carry this client header.
    pub fn strips(&self, name: &[u8]) -> bool {
        self.strip.iter().any(|s| name.eq_ignore_ascii_case(s))
    }
}

/// One cached answer about a token.
struct CacheEntry<V> {
    token: Box<[u8]>,
    /// The entry is not used from this second on.
    valid_until: u64,
    value: V,
}

/// Answers about tokens, per worker: a fixed number of slots indexed by a
/// keyed hash of the token, each holding the whole token (compared in full
/// before use, so a hash collision can only cost a verification, never
/// skip one). JWT entries live until the token's `exp` (plus leeway) and
/// are used only while their issuer's key set is the one that verified
/// them; introspection entries live as the endpoint's answer allows.
pub struct TokenCache<V> {
    slots: Box<[Option<CacheEntry<V>>]>,
    mask: usize,
    seed: u64,
}

impl<V> TokenCache<V> {
    pub fn new(entries: usize, seed: u64) -> TokenCache<V> {
        let n = entries.max(1).next_power_of_two();
        TokenCache {
            slots: (0..n).map(|_| None).collect(),
            mask: n - 1,
            seed: seed | 1,
        }
    }

    fn slot(&self, token: &[u8]) -> usize {
        let mut h = self.seed;
        let mut chunks = token.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        }
        for &b in chunks.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        h ^= h >> 32;
        (h as usize) & self.mask
    }

    /// The answer cached for `token`, if still valid at `now`.
    pub fn get(&self, token: &[u8], now: u64) -> Option<&V> {
        match &self.slots[self.slot(token)] {
            Some(e) if &*e.token == token && now < e.valid_until => Some(&e.value),
            _ => None,
        }
    }

    pub fn put(&mut self, token: &[u8], valid_until: u64, value: V) {
        let i = self.slot(token);
        self.slots[i] = Some(CacheEntry {
            token: token.into(),
            valid_until,
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_by_raw_name() {
        assert_eq!(
            query_param(b"?a=1&token=xyz&b", b"token"),
            Some(&b"xyz"[..])
        );
        assert_eq!(query_param(b"?tokens=1", b"token"), None);
        assert_eq!(query_param(b"", b"token"), None);
    }
}

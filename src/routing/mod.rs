//! The compiled route table: which route answers a request.
//!
//! Routes are compiled once at config load into per-host candidate lists
//! already sorted by precedence, so matching a request is a hash lookup plus a
//! short scan that allocates nothing.
//!
//! # Precedence (most specific wins, deterministically)
//! 1. Host: an exact host beats a `*.suffix` wildcard (longer suffix first),
//!    which beats a route with no host condition.
//! 2. Path, among routes of the same host tier: `path` (exact) first, then
//!    `segment_prefix`/`prefix` by prefix length, longest first (for equal
//!    lengths `segment_prefix` first, being the narrower), then no path condition.
//! 3. More header conditions first, then routes with a method list before
//!    routes accepting any method.
//! 4. Order in the config file.
//!
//! The first candidate whose conditions all hold wins; no candidate is 404.
//!
//! # Adding a condition
//! Add a field to [`Route`], check it in [`Route::matches`], give it a rank
//! in [`Route::rank`] if it makes a route more specific, and document it in
//! docs/configuration.md.

pub mod redirect;

use std::collections::HashMap;

use crate::http::head::{Method, RequestView};

/// What the host must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lowercase host without port.
    Exact(Box<[u8]>),
    /// `*.example.com` stored as `.example.com`: matches `a.example.com`,
    /// `a.b.example.com`, never `example.com` itself.
    Suffix(Box<[u8]>),
}

/// What the path (without query) must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(Box<[u8]>),
    /// Plain byte prefix: `/api` matches `/apix`.
    Prefix(Box<[u8]>),
    /// Segment-aware prefix: `/api` matches `/api` and `/api/...`, not `/apix`.
    SegmentPrefix(Box<[u8]>),
}

impl PathMatch {
    fn matches(&self, path: &[u8], ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        let starts = |p: &[u8]| path.len() >= p.len() && eq(&path[..p.len()], p);
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => eq(path, p),
            PathMatch::Prefix(p) => starts(p),
            PathMatch::SegmentPrefix(p) => {
                starts(p) && (path.len() == p.len() || p.ends_with(b"/") || path[p.len()] == b'/')
            }
        }
    }

    /// The length of the matched prefix, for prefix rewrites.
    pub fn prefix_len(&self) -> usize {
        match self {
            PathMatch::Prefix(p) | PathMatch::SegmentPrefix(p) => p.len(),
            _ => 0,
        }
    }
}

/// A set of methods as a bitmask over [`Method`]; empty means any method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub fn any() -> Self {
        Self(0)
    }
    pub fn insert(&mut self, m: Method) {
        self.0 |= m.bit();
    }
    pub fn is_any(self) -> bool {
        self.0 == 0
    }
    pub fn contains(self, m: Method) -> bool {
        self.0 == 0 || self.0 & m.bit() != 0
    }
}

/// A header condition: present, or present with an exact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase field name.
    pub name: Box<[u8]>,
    pub value: Option<Box<[u8]>>,
}

/// What a route does with a matched request.
#[derive(Debug, Clone)]
pub enum Action {
    Proxy(ProxyAction),
    Respond(DirectResponse),
    /// The OAuth2 client-credentials token endpoint (`auth.token_endpoint`).
    OAuth2Token,
}

#[derive(Debug, Clone)]
pub struct ProxyAction {
    /// Index into `Config::clusters`.
    pub cluster: usize,
    /// Replaces the matched prefix when set ("" strips it).
    pub rewrite_prefix: Option<Box<[u8]>>,
    /// Host sent upstream instead of the client's.
    pub host_rewrite: Option<Box<[u8]>>,
}

/// A response the gateway makes itself (health page, maintenance, redirect).
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    /// Pre-validated `name: value` pairs.
    pub headers: Box<[(Box<str>, Box<str>)]>,
    pub body: Box<[u8]>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Box<str>,
    /// Access-log lines per million requests (`access_log_sample` x 1e6).
    pub access_log_ppm: u32,
    /// Match the path case-insensitively (ASCII).
    pub ignore_case: bool,
    /// IP filter, header policy, CORS, validation, path opt-ins.
    pub policy: crate::security::RoutePolicy,
    /// Concurrency cap, per worker.
    pub concurrency: Option<crate::ratelimit::throttle::Concurrency>,
    /// Rate-limit policies, all of which must admit a request.
    pub rate_limits: Box<[std::sync::Arc<crate::ratelimit::Policy>]>,
    /// Who may use the route; `None` = anyone.
    pub auth: Option<Box<crate::auth::RouteAuth>>,
    pub host: HostMatch,
    pub path: PathMatch,
    pub methods: MethodSet,
    pub headers: Box<[HeaderMatch]>,
    pub action: Action,
    /// Effective body limit (route override or the global limit).
    pub max_body_bytes: u64,
    /// Position in the config file: the last tie-breaker.
    pub order: usize,
}

impl Route {
    fn matches(&self, req: &RequestView<'_>, path: &[u8], method: Method) -> bool {
        self.path.matches(path, self.ignore_case)
            && self.methods.contains(method)
            && self.headers.iter().all(|h| match req.header(&h.name) {
                None => false,
                Some(v) => h.value.as_deref().is_none_or(|want| v == want),
            })
    }

    /// Sort key within a host tier: smaller sorts first.
    fn rank(&self) -> (u8, usize, u8, usize, u8, usize) {
        let (kind, len, narrow) = match &self.path {
            PathMatch::Exact(p) => (0, p.len(), 0),
            PathMatch::SegmentPrefix(p) => (1, p.len(), 0),
            PathMatch::Prefix(p) => (1, p.len(), 1),
            PathMatch::Any => (2, 0, 0),
        };
        (
            kind,
            usize::MAX - len,
            narrow,
            usize::MAX - self.headers.len(),
            u8::from(self.methods.is_any()),
            self.order,
        )
    }
}

/// The compiled table.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    exact: HashMap<Box<[u8]>, Vec<u32>>,
    /// `(suffix, candidates)`, longest suffix first.
    suffix: Vec<(Box<[u8]>, Vec<u32>)>,
    any_host: Vec<u32>,
}

/// Host names longer than this cannot be routed by host (RFC 1035 allows 253).
const MAX_HOST: usize = 255;

impl Router {
    /// Compiles routes (in config order) into the lookup structure.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut exact: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut suffix: Vec<(Box<[u8]>, Vec<u32>)> = Vec::new();
        let mut any_host = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            match &r.host {
                HostMatch::Any => any_host.push(i),
                HostMatch::Exact(h) => exact.entry(h.clone()).or_default().push(i),
                HostMatch::Suffix(s) => match suffix.iter_mut().find(|(k, _)| k == s) {
                    Some((_, v)) => v.push(i),
                    None => suffix.push((s.clone(), vec![i])),
                },
            }
        }
        let sort = |list: &mut Vec<u32>| list.sort_by_key(|&i| routes[i as usize].rank());
        exact.values_mut().for_each(sort);
        suffix.iter_mut().for_each(|(_, v)| sort(v));
        sort(&mut any_host);
        suffix.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Self {
            routes,
            exact,
            suffix,
            any_host,
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request, or `None` (404).
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Route> {
        self.find_for(req, req.path(), req.head.method)
    }

    /// The route for a request with its normalised `path`, matched as if its
    /// method were `method` (a CORS preflight is routed by the method it
    /// asks about).
    pub fn find_for(&self, req: &RequestView<'_>, path: &[u8], method: Method) -> Option<&Route> {
        let mut lower = [0u8; MAX_HOST];
        let host = req.host().and_then(|h| normalize_host(h, &mut lower));
        if let Some(host) = host {
            if let Some(list) = self.exact.get(host) {
                if let Some(r) = self.first(list, req, path, method) {
                    return Some(r);
                }
            }
            for (s, list) in &self.suffix {
                if host.len() > s.len() && host.ends_with(s) {
                    if let Some(r) = self.first(list, req, path, method) {
                        return Some(r);
                    }
                }
            }
        }
        self.first(&self.any_host, req, path, method)
    }

    fn first(
        &self,
        list: &[u32],
        req: &RequestView<'_>,
        path: &[u8],
        method: Method,
    ) -> Option<&Route> {
        list.iter()
            .map(|&i| &self.routes[i as usize])
            .find(|r| r.matches(req, path, method))
    }
}

/// Lowercases the host into `out` and strips a port (`host:8080`, `[::1]:8080`).
fn normalize_host<'a>(host: &[u8], out: &'a mut [u8; MAX_HOST]) -> Option<&'a [u8]> {
    let host = if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']')?;
        &host[..=end]
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) => &host[..i],
            None => host,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > MAX_HOST {
        return None;
    }
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(&out[..host.len()])
}

#[cfg(test)]
mod tests;

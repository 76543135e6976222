//! Raw config -> validated [`Config`]: every check that spans fields, resolves
//! names, or compiles routes. Collects all problems instead of stopping at the
//! first, so `ringgate check` shows an operator everything in one run.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use super::diagnostic::{ConfigError, Diagnostic, KeyPath, Locator};
use super::raw::{BalancerKind, RawCluster, RawConfig, RawEndpoint, RawRoute, RawWorkers};
use super::{
    AccessLogConfig, ClusterConfig, Config, EndpointConfig, Limits, ListenerConfig, LogConfig,
    PoolConfig, Timeouts,
};
use crate::http::head::{HeadLimits, Method, MAX_HEADERS_CAP};
use crate::observability::log_stream::Destination;
use crate::routing::{
    Action, DirectResponse, HeaderMatch, HostMatch, MethodSet, PathMatch, ProxyAction, Route,
    Router,
};
use crate::security::{RoutePolicy, Security};

/// Most workers any config may ask for.
const MAX_WORKERS: i64 = 1024;

struct Checker<'a> {
    loc: Locator<'a>,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        let d = self.loc.at_path(path, message.into());
        self.errors.push(d);
    }
}

pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    parse_in(file, text, std::path::Path::new(file).parent())
}

/// Parses with relative file paths (IP lists) resolved against `dir`.
pub fn parse_in(
    file: &str,
    text: &str,
    dir: Option<&std::path::Path>,
) -> Result<Config, ConfigError> {
    let loc = Locator::new(file, text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(ConfigError {
                diagnostics: vec![loc.at_span(e.span(), e.message().to_string())],
            })
        }
    };
    let mut c = Checker {
        loc,
        errors: Vec::new(),
    };
    let config = build(&mut c, raw, dir.unwrap_or(std::path::Path::new("")));
    if c.errors.is_empty() {
        Ok(config)
    } else {
        c.errors.sort_by_key(|d| (d.line, d.column));
        Err(ConfigError {
            diagnostics: c.errors,
        })
    }
}

fn build(c: &mut Checker<'_>, raw: RawConfig, dir: &std::path::Path) -> Config {
    let root = KeyPath::root();
    let server = root.key("server");
    let workers = match raw.server.workers {
        RawWorkers::Named(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        RawWorkers::Count(n) if (1..=MAX_WORKERS).contains(&n) => n as usize,
        RawWorkers::Count(n) => {
            c.error(
                &server.key("workers"),
                format!("workers = {n} is not valid: use \"auto\" or 1..={MAX_WORKERS}"),
            );
            1
        }
    };
    if !(8..=32768).contains(&raw.server.io_uring_entries) {
        c.error(
            &server.key("io_uring_entries"),
            "io_uring_entries must be between 8 and 32768",
        );
    }
    if !(1..=4096).contains(&raw.server.io_uring_wait_batch) {
        c.error(
            &server.key("io_uring_wait_batch"),
            "io_uring_wait_batch must be between 1 (off) and 4096",
        );
    }
    if !(1..=1_000_000).contains(&raw.server.io_uring_wait_batch_us) {
        c.error(
            &server.key("io_uring_wait_batch_us"),
            "io_uring_wait_batch_us must be between 1 and 1000000",
        );
    }
    if raw.server.io_uring_wait_batch_busy_percent > 100 {
        c.error(
            &server.key("io_uring_wait_batch_busy_percent"),
            "io_uring_wait_batch_busy_percent must be between 0 (always batch) and 100",
        );
    }

    let t = &raw.timeouts;
    let tp = root.key("timeouts");
    for (key, d) in [
        ("request_head", t.request_head),
        ("request_body_idle", t.request_body_idle),
        ("keepalive_idle", t.keepalive_idle),
        ("upstream_connect", t.upstream_connect),
        ("upstream_response_head", t.upstream_response_head),
        ("upstream_idle", t.upstream_idle),
    ] {
        if d.0.is_zero() {
            c.error(&tp.key(key), "must be greater than zero");
        }
    }
    if raw.server.drain_timeout.0.is_zero() {
        c.error(&server.key("drain_timeout"), "must be greater than zero");
    }
    let timeouts = Timeouts {
        request_head: t.request_head.0,
        request_body_idle: t.request_body_idle.0,
        keepalive_idle: t.keepalive_idle.0,
        keepalive_park_after: t.keepalive_park_after.0,
        upstream_connect: t.upstream_connect.0,
        upstream_response_head: t.upstream_response_head.0,
        upstream_idle: t.upstream_idle.0,
    };

    let lp = root.key("limits");
    let l = &raw.limits;
    if !(1024..=1 << 20).contains(&l.max_header_bytes.0) {
        c.error(&lp.key("max_header_bytes"), "must be between 1KiB and 1MiB");
    }
    if l.max_request_line.0 < 64 || l.max_request_line.0 > l.max_header_bytes.0 {
        c.error(
            &lp.key("max_request_line"),
            "must be at least 64 and at most limits.max_header_bytes",
        );
    }
    if l.max_headers == 0 || l.max_headers as usize > MAX_HEADERS_CAP {
        c.error(
            &lp.key("max_headers"),
            format!("must be between 1 and {MAX_HEADERS_CAP}"),
        );
    }
    let limits = Limits {
        head: HeadLimits {
            max_request_line: l.max_request_line.0 as usize,
            max_header_bytes: l.max_header_bytes.0 as usize,
            max_headers: (l.max_headers as usize).clamp(1, MAX_HEADERS_CAP),
        },
        max_body_bytes: l.max_body_bytes.0,
    };

    let admin = if raw.admin.enabled {
        parse_listen_addr(c, &root.key("admin").key("address"), &raw.admin.address)
    } else {
        None
    };

    if tracing_subscriber::EnvFilter::builder()
        .parse(&raw.log.level)
        .is_err()
    {
        c.error(
            &root.key("log").key("level"),
            format!("{:?} is not a log level or filter", raw.log.level),
        );
    }
    let log = LogConfig {
        level: raw.log.level.clone(),
        format: raw.log.format,
    };
    let ap = root.key("access_log");
    let a = &raw.access_log;
    if !(4096..=16 << 20).contains(&a.batch.0) {
        c.error(&ap.key("batch"), "must be between 4KiB and 16MiB");
    }
    if !(1..=65536).contains(&a.queue) {
        c.error(&ap.key("queue"), "must be between 1 and 65536");
    }
    if a.flush_interval.0.is_zero() {
        c.error(&ap.key("flush_interval"), "must be greater than zero");
    }
    let access_log = AccessLogConfig {
        destination: destination(c, &ap.key("destination"), &a.destination),
        query: a.query,
        batch_bytes: a.batch.0 as usize,
        queue: a.queue as usize,
        flush_interval: a.flush_interval.0,
    };
    let audit_log = destination(
        c,
        &root.key("audit_log").key("destination"),
        &raw.audit_log.destination,
    );

    let mut listeners = Vec::new();
    let mut tls_watched = Vec::new();
    // (index in `listeners`, index in the file) of redirecting listeners,
    // finished once the route hosts are known.
    let mut redirects = Vec::new();
    let mut names = HashSet::new();
    if raw.listeners.is_empty() {
        c.error(&root, "at least one [[listeners]] entry is required");
    }
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = root.key("listeners").index(i);
        if !names.insert(l.name.as_str()) {
            c.error(
                &p.key("name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        if l.max_connections == 0 {
            c.error(&p.key("max_connections"), "must be at least 1");
        }
        if l.backlog == 0 {
            c.error(&p.key("backlog"), "must be at least 1");
        }
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| tls::listener(c, &p.key("tls"), t, dir, &mut tls_watched));
        if l.tls.is_some() && l.redirect_https.is_some() {
            c.error(
                &p.key("redirect_https"),
                "a TLS listener serves https itself; redirect from a plain listener",
            );
        }
        if let Some(address) = parse_listen_addr(c, &p.key("address"), &l.address) {
            if l.redirect_https.is_some() {
                redirects.push((listeners.len(), i));
            }
            listeners.push(ListenerConfig {
                name: l.name.clone(),
                address,
                max_connections: l.max_connections,
                backlog: l.backlog,
                proxy_protocol: l.proxy_protocol,
                tls: tls.map(std::sync::Arc::new),
                redirect: None,
            });
        }
    }

    let clusters: Vec<ClusterConfig> = raw
        .clusters
        .iter()
        .enumerate()
        .map(|(i, rc)| cluster(c, &root.key("clusters").index(i), rc, dir, &mut tls_watched))
        .collect();
    let mut cluster_names = HashSet::new();
    for (i, cl) in clusters.iter().enumerate() {
        if !cluster_names.insert(cl.name.as_str()) {
            c.error(
                &root.key("clusters").index(i).key("name"),
                format!("duplicate cluster name {:?}", cl.name),
            );
        }
    }

    let mut watched = Vec::new();
    let security = security(c, &root.key("security"), &raw.security, dir, &mut watched);
    let rate_limit = rate_limit(c, &root.key("rate_limit"), &raw.rate_limit);
    let auth_config = auth::auth(c, &root.key("auth"), &raw.auth, dir);

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, rr) in raw.routes.iter().enumerate() {
        let p = root.key("routes").index(i);
        if !route_names.insert(rr.name.as_str()) {
            c.error(
                &p.key("name"),
                format!("duplicate route name {:?}", rr.name),
            );
        }
        if let Some(mut r) = route(c, &p, rr, i, &clusters, limits.max_body_bytes, &auth_config) {
            r.policy = route_policy(c, &p, rr, &raw.security, dir, &mut watched);
            let mut limits = Vec::new();
            for (j, name) in rr.rate_limits.iter().enumerate() {
                match rate_limit
                    .policies
                    .iter()
                    .find(|p| &*p.name == name.as_str())
                {
                    Some(policy) => limits.push(policy.clone()),
                    None => c.error(
                        &p.key("rate_limits").index(j),
                        format!("no [[rate_limit.policies]] named {name:?}"),
                    ),
                }
            }
            if limits.len() > crate::ratelimit::MAX_POLICIES {
                c.error(
                    &p.key("rate_limits"),
                    format!(
                        "at most {} policies per route",
                        crate::ratelimit::MAX_POLICIES
                    ),
                );
                limits.truncate(crate::ratelimit::MAX_POLICIES);
            }
            r.rate_limits = limits.into();
            if let Some(ra) = &rr.auth {
                let checked = auth::route_auth(c, &p.key("auth"), ra, &auth_config);
                let logged = access_log.query == crate::observability::access_log::QueryMode::Keep
                    && access_log.destination.is_some();
                if logged && matches!(checked.token, crate::auth::TokenSource::Query(_)) {
                    c.error(
                        &p.key("auth").key("token_from"),
                        "a token in the query would be written to the access log (access_log.query = \"keep\")",
                    );
                }
                r.auth = Some(Box::new(checked));
            }
            if let Some(rc) = &rr.concurrency {
                let cp = p.key("concurrency");
                if rc.max_in_flight == 0 {
                    c.error(&cp.key("max_in_flight"), "must be at least 1");
                }
                if rc.queue_timeout.0.is_zero() {
                    c.error(&cp.key("queue_timeout"), "must be greater than zero");
                }
                let per_worker = |n: u32| n.div_ceil(workers as u32);
                r.concurrency = Some(crate::ratelimit::throttle::Concurrency {
                    max_in_flight: per_worker(rc.max_in_flight).max(1),
                    queue: per_worker(rc.queue),
                    queue_timeout: rc.queue_timeout.0,
                });
            }
            routes.push(r);
        }
    }
    watched.extend(tls_watched);
    for (at, i) in redirects {
        if let Some(r) = &raw.listeners[i].redirect_https {
            let p = root.key("listeners").index(i).key("redirect_https");
            listeners[at].redirect =
                tls::redirect(c, &p, r, &routes, &listeners).map(std::sync::Arc::new);
        }
    }
    let security = Security {
        watched_files: watched,
        ..security
    };
    let mut client_cert_headers: Vec<Box<[u8]>> = listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.forward.iter().map(|(n, _)| n.clone()))
        .collect();
    client_cert_headers.sort();
    client_cert_headers.dedup();

    Config {
        workers,
        driver: raw.server.driver,
        pin_workers: raw.server.pin_workers,
        io_uring_entries: raw.server.io_uring_entries,
        io_uring_defer_taskrun: raw.server.io_uring_defer_taskrun,
        io_uring_wait_batch: raw.server.io_uring_wait_batch,
        io_uring_wait_batch_us: raw.server.io_uring_wait_batch_us,
        io_uring_wait_batch_busy_percent: raw.server.io_uring_wait_batch_busy_percent,
        via: raw.server.via,
        drain_timeout: raw.server.drain_timeout.0,
        timeouts,
        limits,
        admin,
        log,
        access_log,
        audit_log,
        trace_context: raw.server.trace_context,
        security,
        rate_limit,
        auth: auth_config,
        listeners,
        client_cert_headers: client_cert_headers.into(),
        clusters,
        router: Router::new(routes),
    }
}

/// "off", "stdout", "stderr" or a file path (whose directory must exist).
fn destination(c: &mut Checker<'_>, path: &KeyPath, text: &str) -> Option<Destination> {
    match text {
        "off" => None,
        "stdout" => Some(Destination::Stdout),
        "stderr" => Some(Destination::Stderr),
        "" => {
            c.error(path, "use \"off\", \"stdout\", \"stderr\" or a file path");
            None
        }
        file => {
            let file = std::path::PathBuf::from(file);
            let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                c.error(
                    path,
                    format!(
                        "{:?}: its directory does not exist",
                        file.display().to_string()
                    ),
                );
            }
            Some(Destination::File(file))
        }
    }
}

fn parse_listen_addr(c: &mut Checker<'_>, path: &KeyPath, text: &str) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.error(
                path,
                format!(
                    "{text:?} is not an IP:port address (e.g. \"127.0.0.1:8080\", \"[::]:443\")"
                ),
            );
            None
        }
    }
}

fn cluster(
    c: &mut Checker<'_>,
    p: &KeyPath,
    rc: &RawCluster,
    dir: &Path,
    watched: &mut Vec<PathBuf>,
) -> ClusterConfig {
    if rc.endpoints.is_empty() {
        c.error(&p.key("endpoints"), "a cluster needs at least one endpoint");
    }
    let upstream_tls = rc
        .tls
        .enabled
        .then(|| tls::upstream(c, &p.key("tls"), &rc.tls.table, dir, watched))
        .flatten();
    let mut endpoints = Vec::new();
    for (i, e) in rc.endpoints.iter().enumerate() {
        let ep = p.key("endpoints").index(i);
        let (text, weight) = match e {
            RawEndpoint::Address(a) => (a.as_str(), 1),
            RawEndpoint::Weighted(w) => (w.address.as_str(), w.weight),
        };
        if !(1..=1000).contains(&weight) {
            c.error(&ep.key("weight"), "weight must be between 1 and 1000");
        }
        // Names are resolved once, at load; a reload re-resolves them.
        match text.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(address)) => {
                let server_name = match &upstream_tls {
                    Some(t) => match t.server_name.clone() {
                        Some(name) => Some(name),
                        None => {
                            let name = crate::tls::client::endpoint_server_name(text);
                            if name.is_none() {
                                c.error(&ep, format!("{text:?}: its host is not a valid TLS server name; set tls.server_name"));
                            }
                            name
                        }
                    },
                    None => None,
                };
                endpoints.push(EndpointConfig {
                    address,
                    weight: weight.clamp(1, 1000),
                    server_name,
                });
            }
            Ok(None) | Err(_) => c.error(&ep, format!("{text:?} is not a resolvable host:port")),
        }
    }
    let hash_header = match (&rc.hash_header, rc.balancer) {
        (Some(h), BalancerKind::ConsistentHash) => {
            if !is_token(h) {
                c.error(
                    &p.key("hash_header"),
                    format!("{h:?} is not a valid header name"),
                );
            }
            Some(h.to_ascii_lowercase().into_bytes().into_boxed_slice())
        }
        (Some(_), _) => {
            c.error(
                &p.key("hash_header"),
                "hash_header only applies to balancer = \"consistent_hash\"",
            );
            None
        }
        (None, _) => None,
    };
    if rc.pool.max_requests == 0 {
        c.error(&p.key("pool").key("max_requests"), "must be at least 1");
    }
    if rc.pool.idle_timeout.0.is_zero() {
        c.error(
            &p.key("pool").key("idle_timeout"),
            "must be greater than zero",
        );
    }
    if rc.connect_attempts == 0 {
        c.error(&p.key("connect_attempts"), "must be at least 1");
    }
    ClusterConfig {
        name: rc.name.clone(),
        endpoints,
        balancer: rc.balancer,
        hash_header,
        pool: PoolConfig {
            max_idle: rc.pool.max_idle,
            idle_timeout: rc.pool.idle_timeout.0,
            max_requests: rc.pool.max_requests.max(1),
        },
        max_fails: rc.max_fails,
        fail_timeout: rc.fail_timeout.0,
        connect_attempts: rc.connect_attempts.max(1),
        tls: upstream_tls.map(std::sync::Arc::new),
    }
}

fn route(
    c: &mut Checker<'_>,
    p: &KeyPath,
    rr: &RawRoute,
    order: usize,
    clusters: &[ClusterConfig],
    default_body: u64,
    auth: &crate::auth::AuthConfig,
) -> Option<Route> {
    let m = &rr.matcher;
    let mp = p.key("match");
    let host = match &m.host {
        None => HostMatch::Any,
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            let (wild, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower.as_str()),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
            {
                c.error(
                    &mp.key("host"),
                    format!("{h:?} is not a host name or \"*.suffix\" wildcard"),
                );
            }
            if wild {
                HostMatch::Suffix(format!(".{name}").into_bytes().into_boxed_slice())
            } else {
                HostMatch::Exact(name.as_bytes().into())
            }
        }
    };
    let path_kinds = [
        ("path", &m.path),
        ("prefix", &m.prefix),
        ("segment_prefix", &m.segment_prefix),
    ];
    let given: Vec<_> = path_kinds.iter().filter(|(_, v)| v.is_some()).collect();
    if given.len() > 1 {
        c.error(
            &mp.key(given[1].0),
            "use only one of path, prefix and segment_prefix",
        );
    }
    for (key, v) in path_kinds {
        if let Some(v) = v {
            if !v.starts_with('/') || v.bytes().any(|b| !b.is_ascii_graphic() || b == b'?') {
                c.error(
                    &mp.key(key),
                    format!("{v:?} must start with '/' and hold no spaces, controls or '?'"),
                );
            }
        }
    }
    let path = match (&m.path, &m.prefix, &m.segment_prefix) {
        (Some(v), _, _) => PathMatch::Exact(v.as_bytes().into()),
        (None, Some(v), _) => PathMatch::Prefix(v.as_bytes().into()),
        (None, None, Some(v)) => PathMatch::SegmentPrefix(v.as_bytes().into()),
        (None, None, None) => PathMatch::Any,
    };
    let mut methods = MethodSet::any();
    for (i, name) in m.methods.iter().flatten().enumerate() {
        match Method::from_config(name) {
            Some(method) => methods.insert(method),
            None => c.error(
                &mp.key("methods").index(i),
                format!("{name:?} is not an HTTP method (use upper case, e.g. \"GET\")"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        if !is_token(&h.name) {
            c.error(
                &mp.key("headers").index(i).key("name"),
                format!("{:?} is not a valid header name", h.name),
            );
        }
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase().into_bytes().into(),
            value: h.value.as_ref().map(|v| v.as_bytes().into()),
        });
    }
    let action = match (&rr.proxy, &rr.respond) {
        (None, None) if rr.oauth2.is_some() => {
            let op = p.key("oauth2");
            match (rr.oauth2.as_deref(), &auth.token) {
                (_, None) => {
                    c.error(&op, "needs [auth.token_endpoint]");
                    return None;
                }
                (Some("token"), Some(_)) => Action::OAuth2Token,
                (Some("jwks"), Some(t)) => Action::Respond(DirectResponse {
                    status: 200,
                    headers: Box::new([
                        ("content-type".into(), "application/json".into()),
                        ("cache-control".into(), "public, max-age=300".into()),
                    ]),
                    body: t.jwks.as_bytes().into(),
                }),
                (other, _) => {
                    c.error(&op, format!("{other:?} is not \"token\" or \"jwks\""));
                    return None;
                }
            }
        }
        (Some(_), Some(_)) | (None, None) => {
            c.error(
                p,
                "a route needs exactly one of `proxy`, `respond` and `oauth2`",
            );
            return None;
        }
        (Some(px), None) => {
            let pp = p.key("proxy");
            let Some(cluster) = clusters.iter().position(|cl| cl.name == px.cluster) else {
                c.error(
                    &pp.key("cluster"),
                    format!("no cluster named {:?}", px.cluster),
                );
                return None;
            };
            if let Some(rw) = &px.rewrite_prefix {
                if path.prefix_len() == 0 {
                    c.error(
                        &pp.key("rewrite_prefix"),
                        "needs match.prefix or match.segment_prefix",
                    );
                }
                if !(rw.is_empty() || rw.starts_with('/'))
                    || rw.bytes().any(|b| !b.is_ascii_graphic())
                {
                    c.error(
                        &pp.key("rewrite_prefix"),
                        format!("{rw:?} must be empty or start with '/'"),
                    );
                }
            }
            if let Some(h) = &px.host_rewrite {
                if h.is_empty() || h.bytes().any(|b| !b.is_ascii_graphic()) {
                    c.error(
                        &pp.key("host_rewrite"),
                        format!("{h:?} is not a valid host"),
                    );
                }
            }
            Action::Proxy(ProxyAction {
                cluster,
                rewrite_prefix: px.rewrite_prefix.as_ref().map(|s| s.as_bytes().into()),
                host_rewrite: px.host_rewrite.as_ref().map(|s| s.as_bytes().into()),
            })
        }
        (None, Some(rs)) => {
            let rp = p.key("respond");
            if !(200..=599).contains(&rs.status) {
                c.error(
                    &rp.key("status"),
                    format!("{} is not a final status (200-599)", rs.status),
                );
            }
            for (name, value) in &rs.headers {
                let lower = name.to_ascii_lowercase();
                if !is_token(name) || value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    c.error(
                        &rp.key("headers").key(name),
                        format!("{name:?} is not a valid header"),
                    );
                } else if matches!(
                    lower.as_str(),
                    "content-length" | "transfer-encoding" | "connection" | "x-request-id"
                ) {
                    c.error(
                        &rp.key("headers").key(name),
                        format!("{name} is set by the gateway"),
                    );
                }
            }
            Action::Respond(DirectResponse {
                status: rs.status,
                headers: rs
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
                body: rs.body.as_bytes().into(),
            })
        }
    };
    if !(0.0..=1.0).contains(&rr.access_log_sample) {
        c.error(
            &p.key("access_log_sample"),
            "must be between 0.0 (no lines) and 1.0 (every request)",
        );
    }
    Some(Route {
        name: rr.name.as_str().into(),
        access_log_ppm: (rr.access_log_sample.clamp(0.0, 1.0) * 1e6).round() as u32,
        ignore_case: m.ignore_case,
        policy: RoutePolicy::default(),
        concurrency: None,
        rate_limits: Box::new([]),
        auth: None,
        host,
        path,
        methods,
        headers: headers.into(),
        action,
        max_body_bytes: rr.max_body_bytes.map_or(default_body, |b| b.0),
        order,
    })
}

/// RFC 9110 5.6.2 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

mod auth;
mod edge;
#[cfg(test)]
mod tests;
mod tls;

use edge::{rate_limit, route_policy, security};

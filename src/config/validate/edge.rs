//! Validation of the edge policies: rate-limit policies, `[security]`,
//! IP filters, response header policies and the per-route security bundle
//! (CORS, request validation, OpenAPI, path opt-ins). Split from
//! `validate.rs` so each file stays readable; same `Checker`, same rules.

use std::collections::HashSet;

use super::{is_token, Checker};
use crate::config::diagnostic::KeyPath;
use crate::config::raw::{RawIpFilter, RawResponseHeaders, RawRoute, RawSecurity};
use crate::http::head::Method;
use crate::routing::MethodSet;
use crate::security::cors::Cors;
use crate::security::ipset::{parse_entry, read_list, IpSet};
use crate::security::path::Anomalies;
use crate::security::validate::{QueryRule, Validate};
use crate::security::{Field, HeaderPolicy, IpFilter, RoutePolicy, Security};

pub(super) fn rate_limit(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &crate::config::raw::RawRateLimit,
) -> crate::ratelimit::RateLimitConfig {
    use crate::ratelimit::{KeyPart, Policy, RateLimitConfig};
    if raw.sync_interval.0.is_zero() || raw.sync_interval.0 > std::time::Duration::from_secs(10) {
        c.error(&p.key("sync_interval"), "must be between 1ms and 10s");
    }
    if !(1024..=1 << 26).contains(&raw.table_size) {
        c.error(&p.key("table_size"), "must be between 1024 and 67108864");
    }
    let mut policies = Vec::new();
    let mut names = HashSet::new();
    for (i, rp) in raw.policies.iter().enumerate() {
        let pp = p.key("policies").index(i);
        if !names.insert(rp.name.as_str()) {
            c.error(
                &pp.key("name"),
                format!("duplicate policy name {:?}", rp.name),
            );
        }
        if rp.name.is_empty()
            || !rp
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            c.error(&pp.key("name"), "use letters, digits, '-', '_' and '.'");
        }
        if rp.rate == 0 {
            c.error(&pp.key("rate"), "must be at least 1");
        }
        if rp.per.0 < std::time::Duration::from_secs(1)
            || rp.per.0 > std::time::Duration::from_secs(86_400)
        {
            c.error(&pp.key("per"), "must be between 1s and 1d (24h)");
        }
        let burst = rp.burst.unwrap_or(rp.rate);
        if burst == 0 {
            c.error(&pp.key("burst"), "must be at least 1");
        }
        let mut key = Vec::new();
        for (j, part) in rp.key.iter().enumerate() {
            match part.as_str() {
                "client_ip" => key.push(KeyPart::ClientIp),
                "route" => key.push(KeyPart::Route),
                "principal" => key.push(KeyPart::Principal),
                h if h.starts_with("header:") && is_token(&h[7..]) => {
                    key.push(KeyPart::Header(
                        h[7..].to_ascii_lowercase().into_bytes().into(),
                    ));
                }
                other => c.error(
                    &pp.key("key").index(j),
                    format!(
                        "{other:?} is not \"client_ip\", \"route\", \"principal\" or \"header:<name>\""
                    ),
                ),
            }
        }
        policies.push(std::sync::Arc::new(Policy::new(
            &rp.name,
            rp.rate.max(1),
            rp.per.0.max(std::time::Duration::from_secs(1)),
            burst.max(1),
            key,
        )));
    }
    let redis = raw.redis.as_ref().map(|r| redis(c, &p.key("redis"), r));
    RateLimitConfig {
        policies,
        sync_interval: raw.sync_interval.0.max(std::time::Duration::from_millis(1)),
        table_size: raw.table_size as usize,
        headers: raw.headers,
        redis,
    }
}

fn redis(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &crate::config::raw::RawRedis,
) -> crate::ratelimit::cluster::StoreConfig {
    use crate::ratelimit::cluster::{check_url, Failure, StoreConfig};
    if let Err(e) = check_url(&raw.url) {
        c.error(&p.key("url"), e);
    }
    let failure = match raw.failure.as_str() {
        "open" => Failure::Open,
        "closed" => Failure::Closed,
        _ => {
            c.error(&p.key("failure"), "must be \"open\" or \"closed\"");
            Failure::Open
        }
    };
    let timeout = raw.timeout.0;
    if timeout < std::time::Duration::from_millis(1) || timeout > std::time::Duration::from_secs(10)
    {
        c.error(&p.key("timeout"), "must be between 1ms and 10s");
    }
    if raw.key_prefix.is_empty()
        || !raw
            .key_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
    {
        c.error(
            &p.key("key_prefix"),
            "use printable characters without spaces or braces",
        );
    }
    StoreConfig {
        url: raw.url.clone(),
        failure,
        timeout: timeout.max(std::time::Duration::from_millis(1)),
        key_prefix: raw.key_prefix.clone(),
    }
}

pub(super) fn security(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawSecurity,
    dir: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> Security {
    let mut trusted = Vec::new();
    for (i, e) in raw.trusted_proxies.iter().enumerate() {
        match parse_entry(e) {
            Ok(net) => trusted.push(net),
            Err(m) => c.error(&p.key("trusted_proxies").index(i), m),
        }
    }
    if raw.list_watch_interval.0.is_zero() {
        c.error(&p.key("list_watch_interval"), "must be greater than zero");
    }
    let ip_filter = ip_filter(c, &p.key("ip_filter"), &raw.ip_filter, dir, watched);
    let headers = header_policy(c, &p.key("response_headers"), &raw.response_headers, None);
    let mut gateway_headers = Vec::new();
    headers.render(&mut gateway_headers, std::iter::empty());
    Security {
        trusted_proxies: IpSet::new(trusted),
        ip_filter,
        gateway_headers: gateway_headers.into(),
        watched_files: Vec::new(),
        watch_interval: raw.list_watch_interval.0,
    }
}

fn ip_filter(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawIpFilter,
    dir: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> IpFilter {
    let mut lists: [(Vec<ipnet::IpNet>, bool); 2] = [(Vec::new(), false), (Vec::new(), false)];
    for (slot, key, entries, files) in [
        (0, "allow", &raw.allow, &raw.allow_files),
        (1, "deny", &raw.deny, &raw.deny_files),
    ] {
        for (i, e) in entries.iter().enumerate() {
            match parse_entry(e) {
                Ok(net) => lists[slot].0.push(net),
                Err(m) => c.error(&p.key(key).index(i), m),
            }
            lists[slot].1 = true;
        }
        let files_key = format!("{key}_files");
        for (i, f) in files.iter().enumerate() {
            let path = dir.join(f);
            match read_list(&path) {
                Ok(nets) => lists[slot].0.extend(nets),
                Err((0, e)) => c.error(
                    &p.key(&files_key).index(i),
                    format!("{}: {e}", path.display()),
                ),
                Err((line, e)) => c.error(
                    &p.key(&files_key).index(i),
                    format!("{}:{line}: {e}", path.display()),
                ),
            }
            lists[slot].1 = true;
            watched.push(path);
        }
    }
    let [(allow, has_allow), (deny, _)] = lists;
    IpFilter {
        allow: has_allow.then(|| IpSet::new(allow)),
        deny: IpSet::new(deny),
    }
}

/// The header policy of a route (or, with `route = None`, the global one).
fn header_policy(
    c: &mut Checker<'_>,
    p: &KeyPath,
    global: &RawResponseHeaders,
    route: Option<&RawResponseHeaders>,
) -> HeaderPolicy {
    let layers: Vec<&RawResponseHeaders> = std::iter::once(global).chain(route).collect();
    let defaults = layers.iter().rev().find_map(|l| l.defaults).unwrap_or(true);
    let mut set: Vec<Field> = Vec::new();
    let mut remove: Vec<Box<[u8]>> = crate::config::defaults::REMOVED_RESPONSE_HEADERS
        .iter()
        .map(|n| n.as_bytes().into())
        .collect();
    for l in &layers {
        for (name, value) in &l.set {
            let lower = name.to_ascii_lowercase();
            if !is_token(name) || value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                c.error(
                    &p.key("set").key(name),
                    format!("{name:?} is not a valid header"),
                );
            } else if matches!(
                lower.as_str(),
                "content-length"
                    | "transfer-encoding"
                    | "connection"
                    | "x-request-id"
                    | "keep-alive"
            ) {
                c.error(
                    &p.key("set").key(name),
                    format!("{name} is set by the gateway"),
                );
            }
            set.retain(|(n, _)| **n != *lower.as_bytes());
            set.push((lower.into_bytes().into(), value.as_bytes().into()));
        }
        for (i, name) in l.remove.iter().enumerate() {
            if !is_token(name) {
                c.error(
                    &p.key("remove").index(i),
                    format!("{name:?} is not a header name"),
                );
            }
            remove.push(name.to_ascii_lowercase().into_bytes().into());
        }
        for name in &l.keep {
            remove.retain(|n| !n.eq_ignore_ascii_case(name.as_bytes()));
        }
    }
    let if_absent = if defaults {
        crate::config::defaults::SECURITY_HEADERS
            .iter()
            .filter(|(n, _)| !set.iter().any(|(s, _)| **s == *n.as_bytes()))
            .map(|(n, v)| (n.as_bytes().into(), v.as_bytes().into()))
            .collect()
    } else {
        Vec::new()
    };
    HeaderPolicy::new(remove.into(), set.into(), if_absent.into())
}

pub(super) fn route_policy(
    c: &mut Checker<'_>,
    p: &KeyPath,
    rr: &RawRoute,
    global: &RawSecurity,
    dir: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
) -> RoutePolicy {
    let ip_filter = match &rr.ip_filter {
        Some(f) => ip_filter(c, &p.key("ip_filter"), f, dir, watched),
        None => IpFilter::default(),
    };
    let headers = header_policy(
        c,
        &p.key("response_headers"),
        &global.response_headers,
        rr.response_headers.as_ref(),
    );
    let cors = rr.cors.as_ref().and_then(|raw| {
        if raw.allow_methods.is_empty() {
            c.error(
                &p.key("cors").key("allow_methods"),
                "list at least one method",
            );
        }
        match Cors::new(
            &raw.allow_origins,
            &raw.allow_methods,
            &raw.allow_headers,
            &raw.expose_headers,
            raw.allow_credentials,
            raw.max_age.0.as_secs(),
        ) {
            Ok(cors) => Some(cors),
            Err(m) => {
                c.error(&p.key("cors"), m);
                None
            }
        }
    });
    let vp = p.key("validate");
    let validate = rr.validate.as_ref().map(|v| {
        let methods = v.methods.as_ref().map(|list| {
            let mut set = MethodSet::default();
            for (i, name) in list.iter().enumerate() {
                match Method::from_config(name) {
                    Some(m) => set.insert(m),
                    None => c.error(
                        &vp.key("methods").index(i),
                        format!("{name:?} is not an HTTP method (use upper case)"),
                    ),
                }
            }
            if list.is_empty() {
                c.error(&vp.key("methods"), "list at least one method");
            }
            (set, list.join(", ").into_bytes().into_boxed_slice())
        });
        let mut required = Vec::new();
        for (i, h) in v.required_headers.iter().enumerate() {
            if !is_token(h) {
                c.error(
                    &vp.key("required_headers").index(i),
                    format!("{h:?} is not a header name"),
                );
            }
            required.push(h.to_ascii_lowercase().into_bytes().into_boxed_slice());
        }
        let content_types = v.content_types.as_ref().map(|list| {
            let mut types = Vec::new();
            for (i, t) in list.iter().enumerate() {
                match t.split_once('/') {
                    Some((a, b)) if is_token(a) && is_token(b) => {
                        types.push(t.to_ascii_lowercase().into_bytes().into_boxed_slice());
                    }
                    _ => c.error(
                        &vp.key("content_types").index(i),
                        format!("{t:?} is not a media type (type/subtype)"),
                    ),
                }
            }
            types.into_boxed_slice()
        });
        let mut query = Vec::new();
        for (i, q) in v.query.iter().enumerate() {
            let qp = vp.key("query").index(i);
            if q.name.is_empty() {
                c.error(&qp.key("name"), "must not be empty");
            }
            let pattern = q.pattern.as_ref().and_then(|pat| {
                match regex::Regex::new(&format!("^(?:{pat})$")) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        c.error(
                            &qp.key("pattern"),
                            format!("not a valid regular expression: {e}"),
                        );
                        None
                    }
                }
            });
            query.push(QueryRule {
                name: q.name.as_bytes().into(),
                required: q.required,
                pattern,
                max_length: q.max_length.map(|n| n as usize),
            });
        }
        let json_schema = v.json_schema.as_ref().and_then(|file| {
            let key = vp.key("json_schema");
            let path = dir.join(file);
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    c.error(&key, format!("{}: {e}", path.display()));
                    return None;
                }
            };
            let value: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    c.error(
                        &key,
                        format!(
                            "{}:{}:{}: not JSON: {e}",
                            path.display(),
                            e.line(),
                            e.column()
                        ),
                    );
                    return None;
                }
            };
            match jsonschema::draft202012::new(&value) {
                Ok(v) => Some(std::sync::Arc::new(v)),
                Err(e) => {
                    c.error(
                        &key,
                        format!("{}: not a valid JSON Schema: {e}", path.display()),
                    );
                    None
                }
            }
        });
        let mut json_schema = json_schema;
        let mut content_types = content_types;
        let mut params = Vec::new();
        let mut body_required = None;
        if let Some(oa) = &v.openapi {
            match crate::security::openapi::load(&dir.join(&oa.document), &oa.operation) {
                Ok(op) => {
                    if op.body.is_some() && json_schema.is_some() {
                        c.error(
                            &vp.key("json_schema"),
                            "the OpenAPI operation already gives the body schema; use one",
                        );
                    }
                    json_schema = json_schema.or(op.body);
                    if content_types.is_none() && !op.content_types.is_empty() {
                        content_types = Some(op.content_types.into_boxed_slice());
                    }
                    body_required = Some(op.body_required);
                    params = op.params;
                }
                Err(e) => c.error(&vp.key("openapi"), e),
            }
        }
        Validate {
            json_schema,
            body_required,
            params: params.into(),
            methods,
            required_headers: required.into(),
            content_types,
            max_uri_bytes: v.max_uri_bytes.map(|b| b.0 as usize),
            max_headers: v.max_headers.map(|n| n as usize),
            max_header_bytes: v.max_header_bytes.map(|b| b.0 as usize),
            max_query_params: v.max_query_params.map(|n| n as usize),
            query: query.into(),
        }
    });
    let mut allow_path = 0u8;
    for (i, name) in rr.allow_path.iter().enumerate() {
        match Anomalies::NAMES.iter().find(|(n, _)| n == name) {
            Some((_, bit)) => allow_path |= bit,
            None => c.error(
                &p.key("allow_path").index(i),
                format!("{name:?} is not one of encoded_slash, backslash, double_encoding, invalid_utf8"),
            ),
        }
    }
    RoutePolicy {
        ip_filter,
        headers,
        cors,
        validate,
        allow_path: Anomalies(allow_path),
    }
}

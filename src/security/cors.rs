//! CORS (Fetch standard, "CORS protocol"), per route.
//!
//! The gateway answers preflight requests (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) itself: 204 with the allowed methods,
//! headers and max-age when the origin, method and every requested header
//! are allowed, 403 otherwise. On other requests from an allowed origin it
//! adds `Access-Control-Allow-Origin` (and credentials / exposed fields) to
//! the response; a request from any other origin is forwarded untouched and
//! the browser withholds the response.
//!
//! Origins are exact (`https://app.example.com`) or one-level patterns
//! (`https://*.example.com`, any subdomain, not the apex). `*` allows any
//! origin but is refused at config load together with credentials, so an
//! arbitrary `Origin` is never reflected on a credentialed response.

use crate::http::head::Method;
use crate::http::response::push_field;
use crate::routing::MethodSet;

#[derive(Debug, Clone)]
enum Origin {
    Exact(Box<[u8]>),
    /// `scheme://*` + `suffix` (suffix starts with '.').
    Subdomains {
        scheme: Box<[u8]>,
        suffix: Box<[u8]>,
    },
}

#[derive(Debug, Clone)]
pub struct Cors {
    origins: Box<[Origin]>,
    any_origin: bool,
    credentials: bool,
    methods: MethodSet,
    allow_methods: Box<[u8]>,
    allow_headers: Box<[Box<[u8]>]>,
    allow_headers_value: Box<[u8]>,
    expose: Box<[u8]>,
    max_age: u64,
}

/// Request fields a preflight may name without them being configured.
const SAFELISTED: [&[u8]; 4] = [
    b"accept",
    b"accept-language",
    b"content-language",
    b"content-type",
];

impl Cors {
    /// Builds the policy.
    ///
    /// # Errors
    /// A message for the first invalid origin, method or combination.
    pub fn new(
        origins: &[String],
        methods: &[String],
        headers: &[String],
        expose: &[String],
        credentials: bool,
        max_age_secs: u64,
    ) -> Result<Cors, String> {
        let mut list = Vec::new();
        let mut any_origin = false;
        for o in origins {
            let lower = o.to_ascii_lowercase();
            if lower == "*" {
                if credentials {
                    return Err("allow_origins = [\"*\"] cannot be combined with allow_credentials: the gateway never reflects an arbitrary origin on a credentialed response".into());
                }
                any_origin = true;
                continue;
            }
            let Some((scheme, rest)) = lower.split_once("://") else {
                return Err(format!("{o:?} is not an origin (scheme://host[:port])"));
            };
            if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
                return Err(format!("{o:?} is not an origin (scheme://host[:port])"));
            }
            match rest.strip_prefix('*') {
                Some(suffix)
                    if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') =>
                {
                    list.push(Origin::Subdomains {
                        scheme: format!("{scheme}://").into_bytes().into(),
                        suffix: suffix.as_bytes().into(),
                    });
                }
                Some(_) => return Err(format!("{o:?}: a pattern is scheme://*.domain")),
                None if rest.contains('*') => {
                    return Err(format!("{o:?}: a pattern is scheme://*.domain"))
                }
                None => list.push(Origin::Exact(lower.into_bytes().into())),
            }
        }
        let mut set = MethodSet::default();
        for m in methods {
            match Method::from_config(m) {
                Some(method) => set.insert(method),
                None => return Err(format!("{m:?} is not an HTTP method")),
            }
        }
        let mut allow_headers = Vec::new();
        for h in headers {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            {
                return Err(format!("{h:?} is not a header name"));
            }
            allow_headers.push(h.to_ascii_lowercase().into_bytes().into_boxed_slice());
        }
        Ok(Cors {
            origins: list.into(),
            any_origin,
            credentials,
            methods: set,
            allow_methods: methods.join(", ").into_bytes().into(),
            allow_headers_value: headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
                .into_bytes()
                .into(),
            allow_headers: allow_headers.into(),
            expose: expose.join(", ").into_bytes().into(),
            max_age: max_age_secs,
        })
    }

    /// Whether `origin` (the request's `Origin` value) is allowed.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        if self.any_origin {
            return true;
        }
        self.origins.iter().any(|o| match o {
            Origin::Exact(e) => origin.eq_ignore_ascii_case(e),
            Origin::Subdomains { scheme, suffix } => {
                origin.len() > scheme.len() + suffix.len()
                    && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                    && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && origin[scheme.len()..origin.len() - suffix.len()]
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
            }
        })
    }

    /// Answers a preflight: the response fields when allowed, `false` when
    /// refused.
    pub fn preflight(
        &self,
        origin: &[u8],
        method: &[u8],
        headers: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> bool {
        if !self.allows_origin(origin) || !self.methods.contains(Method::parse(method)) {
            return false;
        }
        let requested = headers.unwrap_or_default();
        let all_allowed = requested
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|h| !h.is_empty())
            .all(|h| {
                SAFELISTED.iter().any(|s| h.eq_ignore_ascii_case(s))
                    || self.allow_headers.iter().any(|a| h.eq_ignore_ascii_case(a))
            });
        if !all_allowed {
            return false;
        }
        self.origin_fields(origin, out);
        push_field(out, b"access-control-allow-methods", &self.allow_methods);
        if !self.allow_headers_value.is_empty() {
            push_field(
                out,
                b"access-control-allow-headers",
                &self.allow_headers_value,
            );
        }
        out.extend_from_slice(b"access-control-max-age: ");
        crate::http::response::push_u64(out, self.max_age);
        out.extend_from_slice(b"\r\n");
        true
    }

    /// Fields for a non-preflight response to an allowed origin.
    pub fn response_fields(&self, origin: &[u8], out: &mut Vec<u8>) {
        if !self.allows_origin(origin) {
            return;
        }
        self.origin_fields(origin, out);
        if !self.expose.is_empty() {
            push_field(out, b"access-control-expose-headers", &self.expose);
        }
    }

    fn origin_fields(&self, origin: &[u8], out: &mut Vec<u8>) {
        if self.any_origin && !self.credentials {
            push_field(out, b"access-control-allow-origin", b"*");
        } else {
            push_field(out, b"access-control-allow-origin", origin);
            push_field(out, b"vary", b"Origin");
        }
        if self.credentials {
            push_field(out, b"access-control-allow-credentials", b"true");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Result<Cors, String> {
        Cors::new(
            &origins.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &["GET".into(), "POST".into()],
            &["X-Token".into()],
            &[],
            credentials,
            600,
        )
    }

    #[test]
    fn origins_exact_and_subdomain_patterns() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true).unwrap();
        assert!(c.allows_origin(b"https://app.example.com"));
        assert!(c.allows_origin(b"HTTPS://APP.EXAMPLE.COM"));
        assert!(!c.allows_origin(b"http://app.example.com"));
        assert!(!c.allows_origin(b"https://app.example.com.evil.net"));
        assert!(c.allows_origin(b"https://a.b.example.org"));
        assert!(!c.allows_origin(b"https://example.org"));
        assert!(!c.allows_origin(b"https://evil.net/.example.org"));
        assert!(!c.allows_origin(b"https://evilexample.org"));
        assert!(!c.allows_origin(b"null"));
    }

    #[test]
    fn wildcard_with_credentials_is_refused() {
        assert!(cors(&["*"], true).is_err());
        assert!(cors(&["https://*"], false).is_err());
        assert!(cors(&["app.example.com"], false).is_err());
        let any = cors(&["*"], false).unwrap();
        let mut out = Vec::new();
        any.response_fields(b"https://whoever.test", &mut out);
        assert_eq!(out, b"access-control-allow-origin: *\r\n");
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let c = cors(&["https://app.example.com"], true).unwrap();
        let mut out = Vec::new();
        assert!(c.preflight(
            b"https://app.example.com",
            b"POST",
            Some(b"x-token, content-type"),
            &mut out
        ));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("access-control-allow-origin: https://app.example.com\r\n"));
        assert!(text.contains("access-control-allow-credentials: true\r\n"));
        assert!(text.contains("access-control-allow-methods: GET, POST\r\n"));
        assert!(text.contains("access-control-max-age: 600\r\n"));
        let mut out = Vec::new();
        assert!(!c.preflight(b"https://app.example.com", b"DELETE", None, &mut out));
        assert!(!c.preflight(
            b"https://app.example.com",
            b"GET",
            Some(b"x-other"),
            &mut out
        ));
        assert!(!c.preflight(b"https://evil.test", b"GET", None, &mut out));
    }
}

//! The HTTP to HTTPS redirect of a plain listener (`redirect_https`).
//!
//! Every request gets a 308 (or 301) to the same host, path and query over
//! https, but only for host names the configuration knows: route hosts,
//! the names of the TLS certificates the gateway serves, and names listed
//! on the listener. Any other host gets 421, no host at all 400, so the
//! redirect can never send a client somewhere the operator did not name.

use std::collections::HashSet;

use super::{normalize_host, MAX_HOST};
use crate::error::GatewayError;
use crate::http::head::RequestView;

#[derive(Debug)]
pub struct HttpsRedirect {
    /// 308 or 301.
    pub status: u16,
    /// `:port` after the host in `Location`; empty for 443.
    port: Box<[u8]>,
    /// Lowercase host names.
    exact: HashSet<Box<[u8]>>,
    /// `*.example.com` as `.example.com`.
    suffixes: Box<[Box<[u8]>]>,
}

impl HttpsRedirect {
    /// `names` are lowercase host names or `*.suffix` wildcards.
    pub fn new<'a>(status: u16, port: u16, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut exact = HashSet::new();
        let mut suffixes = Vec::new();
        for n in names {
            match n.strip_prefix('*') {
                Some(suffix) => suffixes.push(suffix.as_bytes().into()),
                None => {
                    exact.insert(n.as_bytes().into());
                }
            }
        }
        suffixes.sort();
        suffixes.dedup();
        let port = if port == 443 {
            Box::default()
        } else {
            format!(":{port}").into_bytes().into()
        };
        Self {
            status,
            port,
            exact,
            suffixes: suffixes.into(),
        }
    }

    /// Whether no host name is known (every request would be refused).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    fn knows(&self, host: &[u8]) -> bool {
        self.exact.contains(host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s))
    }

    /// Writes the `Location` value for `req` into `out`.
    ///
    /// # Errors
    /// [`GatewayError::BadRequest`] without a host or an origin-form path,
    /// [`GatewayError::MisdirectedRequest`] for a host the config does not
    /// know.
    pub fn location(&self, req: &RequestView<'_>, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let mut lower = [0u8; MAX_HOST];
        let host = req
            .host()
            .and_then(|h| normalize_host(h, &mut lower))
            .filter(|h| !h.is_empty())
            .ok_or(GatewayError::BadRequest)?;
        let path = req.path();
        if !path.starts_with(b"/") {
            // `OPTIONS *` has no https twin to send the client to.
            return Err(GatewayError::BadRequest);
        }
        if !self.knows(host) {
            return Err(GatewayError::MisdirectedRequest);
        }
        out.clear();
        out.extend_from_slice(b"https://");
        out.extend_from_slice(host);
        out.extend_from_slice(&self.port);
        out.extend_from_slice(path);
        out.extend_from_slice(req.query());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_request, HeadLimits, RequestHead};

    fn location(r: &HttpsRedirect, raw: &[u8]) -> Result<String, GatewayError> {
        let mut head = RequestHead::default();
        let limits = HeadLimits {
            max_request_line: 8192,
            max_header_bytes: 16384,
            max_headers: 100,
        };
        parse_request(raw, &limits, &mut head).expect("valid head");
        let view = RequestView {
            head: &head,
            buf: raw,
        };
        let mut out = Vec::new();
        r.location(&view, &mut out)?;
        Ok(String::from_utf8(out).expect("ascii"))
    }

    #[test]
    fn keeps_host_path_and_query_and_drops_the_port() {
        let r = HttpsRedirect::new(308, 443, ["api.example.com", "*.example.net"]);
        assert_eq!(
            location(
                &r,
                b"GET /a/b?x=1&y HTTP/1.1\r\nHost: API.example.com:80\r\n\r\n"
            ),
            Ok("https://api.example.com/a/b?x=1&y".into())
        );
        assert_eq!(
            location(&r, b"GET / HTTP/1.1\r\nHost: a.b.example.net\r\n\r\n"),
            Ok("https://a.b.example.net/".into())
        );
        let r = HttpsRedirect::new(301, 8443, ["api.example.com"]);
        assert_eq!(
            location(&r, b"GET /p HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
            Ok("https://api.example.com:8443/p".into())
        );
    }

    #[test]
    fn refuses_unknown_and_missing_hosts() {
        let r = HttpsRedirect::new(308, 443, ["api.example.com", "*.example.net"]);
        for (raw, err) in [
            (
                &b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"[..],
                GatewayError::MisdirectedRequest,
            ),
            // The wildcard covers subdomains, not the bare suffix.
            (
                b"GET / HTTP/1.1\r\nHost: example.net\r\n\r\n",
                GatewayError::MisdirectedRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: xapi.example.com\r\n\r\n",
                GatewayError::MisdirectedRequest,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", GatewayError::BadRequest),
            (
                b"OPTIONS * HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
                GatewayError::BadRequest,
            ),
        ] {
            assert_eq!(
                location(&r, raw),
                Err(err),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn absolute_form_authority_is_the_host() {
        let r = HttpsRedirect::new(308, 443, ["api.example.com"]);
        assert_eq!(
            location(
                &r,
                b"GET http://evil.example/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
            ),
            Err(GatewayError::MisdirectedRequest)
        );
    }
}

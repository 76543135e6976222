//! Request and response heads: strict parsing and message framing.
//!
//! `httparse` does the tokenising (it is well fuzzed and rejects obs-fold,
//! whitespace before the colon, bare CR and control bytes in requests); this
//! module adds every rule a gateway needs so that it never frames a message
//! differently from the upstream behind it (RFC 9112 6, 11.2 "request
//! smuggling"):
//! - Content-Length and Transfer-Encoding together: 400.
//! - Several Content-Length fields, or a value that is not 1*DIGIT: 400.
//! - Transfer-Encoding other than exactly one `chunked`, or any in HTTP/1.0: 400.
//! - HTTP/1.1 without Host, or with several: 400 (RFC 9112 3.2).
//! - Request line longer than the limit: 414; head too large or too many fields: 431.
//!
//! Parsed heads store byte ranges into the connection's read buffer instead of
//! owned strings, so parsing allocates nothing once the per-connection header
//! vector has grown to its working size.

use std::mem::MaybeUninit;

/// Request methods the gateway names; anything else is `Other` (still proxied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn parse(token: &[u8]) -> Method {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Methods a route's `methods` list may name.
    pub fn from_config(name: &str) -> Option<Method> {
        match Method::parse(name.as_bytes()) {
            Method::Other => None,
            m => Some(m),
        }
    }

    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// RFC 9110 9.2.2: safe to send again after a connection failure.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

/// A byte range in the head buffer (u32 keeps `Header` at 16 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(base: *const u8, part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub name: Span,
    pub value: Span,
}

impl Header {
    /// The field line as it arrived, `name:` OWS `value`, without its line
    /// ending (the parser refuses whitespace before the colon and folded
    /// lines, so these bytes are a valid field line as they stand).
    pub fn line(self) -> std::ops::Range<usize> {
        self.name.start as usize..self.value.end.max(self.name.end) as usize
    }
}

/// Why a head was refused; each names the status it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// 400: syntax error or a framing rule above.
    #[error("{0}")]
    Malformed(&'static str),
    /// 414: request line over `limits.max_request_line`.
    #[error("request line too long")]
    UriTooLong,
    /// 431: head over `limits.max_header_bytes` or more than `limits.max_headers` fields.
    #[error("request header fields too large")]
    HeadersTooLarge,
}

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// The most header fields any config may allow (sizes the parse scratch array).
pub const MAX_HEADERS_CAP: usize = 512;

/// A parsed request head. Reused across requests on a connection.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub method_span: Span,
    pub version: Version,
    /// The path as sent (origin-form, or the path part of absolute-form).
    pub path: Span,
    /// The query including its leading `?`, possibly empty.
    pub query: Span,
    /// Host from the target's authority (absolute-form) or the Host field.
    pub host: Option<Span>,
    pub headers: Vec<Header>,
    pub framing: Framing,
    pub expect_continue: bool,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// A Connection field names fields (a token besides `close` and
    /// `keep-alive`); those are hop-by-hop too.
    pub connection_lists_fields: bool,
    /// A client-supplied X-Request-Id that is safe to reuse.
    pub request_id: Option<Span>,
    /// Bytes of the head including the final CRLF.
    pub len: usize,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            method: Method::Get,
            method_span: Span::default(),
            version: Version::Http11,
            path: Span::default(),
            query: Span::default(),
            host: None,
            headers: Vec::new(),
            framing: Framing::Empty,
            expect_continue: false,
            keep_alive: true,
            connection_lists_fields: false,
            request_id: None,
            len: 0,
        }
    }
}

/// A request head together with the bytes it points into.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
}

impl<'a> RequestView<'a> {
    /// First field with this (lowercase) name.
    pub fn header(&self, lower_name: &[u8]) -> Option<&'a [u8]> {
        self.head
            .headers
            .iter()
            .find(|h| h.name.get(self.buf).eq_ignore_ascii_case(lower_name))
            .map(|h| h.value.get(self.buf))
    }

    pub fn path(&self) -> &'a [u8] {
        self.head.path.get(self.buf)
    }

    pub fn query(&self) -> &'a [u8] {
        self.head.query.get(self.buf)
    }

    pub fn host(&self) -> Option<&'a [u8]> {
        self.head.host.map(|s| s.get(self.buf))
    }

    pub fn method_bytes(&self) -> &'a [u8] {
        self.head.method_span.get(self.buf)
    }
}

/// Outcome of feeding bytes to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Complete,
    /// More bytes needed; nothing was written to the head.
    Partial,
}

/// Parses a request head at the start of `buf` into `head`.
///
/// # Errors
/// [`HeadError`] for anything the gateway must refuse; the connection is then
/// answered and closed.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Parse, HeadError> {
    // 414 is decided on the request line alone, before the head is complete.
    match memchr(b'\n', buf) {
        Some(i) if i > limits.max_request_line => return Err(HeadError::UriTooLong),
        None if buf.len() > limits.max_request_line => return Err(HeadError::UriTooLong),
        _ => {}
    }
    let mut scratch: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CAP] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, &mut scratch[..limits.max_headers]);
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_header_bytes {
                Err(HeadError::HeadersTooLarge)
            } else {
                Ok(Parse::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if len > limits.max_header_bytes {
        return Err(HeadError::HeadersTooLarge);
    }
    let base = buf.as_ptr();
    let method = req.method.unwrap_or_default().as_bytes();
    let target = req.path.unwrap_or_default().as_bytes();
    head.method = Method::parse(method);
    head.method_span = Span::of(base, method);
    head.version = if req.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    head.len = len;
    head.headers.clear();
    head.headers.extend(req.headers.iter().map(|h| Header {
        name: Span::of(base, h.name.as_bytes()),
        value: Span::of(base, h.value),
    }));
    let authority = split_target(base, target, head)?;
    check_fields(buf, head, authority)?;
    Ok(Parse::Complete)
}

/// Splits the request target into path and query; returns the authority of an
/// absolute-form target.
fn split_target(
    base: *const u8,
    target: &[u8],
    head: &mut RequestHead,
) -> Result<Option<Span>, HeadError> {
    // httparse lets obs-text through in the target; RFC 3986 does not.
    if !target.is_ascii() {
        return Err(HeadError::Malformed("request target must be ASCII"));
    }
    let origin_form = target.first() == Some(&b'/');
    let asterisk_form = target == b"*" && head.method == Method::Options;
    let (authority, path_and_query) = if origin_form || asterisk_form {
        (None, target)
    } else if let Some(rest) = strip_scheme(target) {
        // absolute-form (RFC 9112 3.2.2): the authority replaces Host.
        let end = rest
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(rest.len());
        let (auth, pq) = rest.split_at(end);
        if auth.is_empty() || auth.contains(&b'@') {
            return Err(HeadError::Malformed("invalid authority in request target"));
        }
        (Some(Span::of(base, auth)), pq)
    } else {
        return Err(HeadError::Malformed("unsupported request target form"));
    };
    let q = path_and_query
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(q);
    head.path = Span::of(base, path);
    head.query = Span::of(base, query);
    if path.is_empty() {
        // absolute-form without a path means "/"; keep an empty span and let
        // the forwarder write "/".
        head.path = Span::default();
    }
    Ok(authority)
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], b"https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

fn check_fields(
    buf: &[u8],
    head: &mut RequestHead,
    authority: Option<Span>,
) -> Result<(), HeadError> {
    let mut host: Option<Span> = None;
    let mut hosts = 0u32;
    let mut content_length: Option<u64> = None;
    let mut te_seen = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut lists_fields = false;
    head.expect_continue = false;
    head.request_id = None;
    for h in &head.headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                host = Some(h.value);
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(HeadError::Malformed("several Content-Length fields"));
                }
                content_length = Some(
                    parse_content_length(value)
                        .ok_or(HeadError::Malformed("invalid Content-Length"))?,
                );
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if te_seen {
                    return Err(HeadError::Malformed("several Transfer-Encoding fields"));
                }
                te_seen = true;
                if !trim(value).eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Malformed("unsupported Transfer-Encoding"));
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else if !token.is_empty() {
                        lists_fields = true;
                    }
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect")
                && trim(value).eq_ignore_ascii_case(b"100-continue") =>
            {
                head.expect_continue = true;
            }
            12 if name.eq_ignore_ascii_case(b"x-request-id")
                && head.request_id.is_none()
                && valid_request_id(value) =>
            {
                head.request_id = Some(h.value);
            }
            _ => {}
        }
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("several Host fields"));
    }
    let http11 = head.version == Version::Http11;
    if http11 && hosts == 0 {
        return Err(HeadError::Malformed("missing Host"));
    }
    head.host = authority.or(host);
    head.connection_lists_fields = lists_fields;
    head.keep_alive = if http11 {
        !close
    } else {
        keep_alive_token && !close
    };
    head.framing = match (te_seen, content_length) {
        (true, Some(_)) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if !http11 => {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"))
        }
        (true, None) => Framing::Chunked,
        (false, Some(0)) | (false, None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    if !http11 {
        head.expect_continue = false;
    }
    Ok(())
}

/// `1*DIGIT` that fits in u64; no sign, no spaces inside, no list.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// 1 to 128 bytes of `A-Z a-z 0-9 - _ . : / + =`: echoed into logs, upstream
/// headers and JSON bodies, so nothing that needs escaping.
fn valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
}

pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

pub fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// A parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Span,
    pub version: Version,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// The upstream allows the connection to be reused.
    pub keep_alive: bool,
    /// A Connection field names fields besides `close` and `keep-alive`.
    pub connection_lists_fields: bool,
    pub len: usize,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self {
            status: 0,
            reason: Span::default(),
            version: Version::Http11,
            headers: Vec::new(),
            framing: Framing::Empty,
            keep_alive: true,
            connection_lists_fields: false,
            len: 0,
        }
    }
}

/// Parses an upstream response head. `head_request` and the status decide
/// whether a body follows (RFC 9112 6.3 rules 1-2).
///
/// # Errors
/// `HeadError::Malformed` for anything that makes the framing ambiguous; the
/// caller answers 502 and discards the upstream connection.
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    head_request: bool,
    head: &mut ResponseHead,
) -> Result<Parse, HeadError> {
    let mut scratch: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS_CAP] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut scratch,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Err(HeadError::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadersTooLarge),
        Err(_) => return Err(HeadError::Malformed("malformed response head")),
    };
    let base = buf.as_ptr();
    head.status = res.code.unwrap_or(0);
    // httparse takes any three digits; outside 100-599 a code is invalid
    // (RFC 9110 15), and clients would treat it as an error at best.
    if !(100..600).contains(&head.status) {
        return Err(HeadError::Malformed("status code outside 100-599"));
    }
    // A reason phrase with obs-text comes back as "", a string outside
    // `buf`: it is dropped (the status line stays valid without one).
    head.reason = match res.reason {
        Some(r) if !r.is_empty() => Span::of(base, r.as_bytes()),
        _ => Span::default(),
    };
    head.version = if res.version == Some(0) {
        Version::Http10
    } else {
        Version::Http11
    };
    head.len = len;
    head.headers.clear();
    head.headers.extend(res.headers.iter().map(|h| Header {
        name: Span::of(base, h.name.as_bytes()),
        value: Span::of(base, h.value),
    }));
    let mut content_length = None;
    let mut te = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut lists_fields = false;
    for h in &head.headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(HeadError::Malformed("several Content-Length fields"));
            }
            content_length = Some(
                parse_content_length(value)
                    .ok_or(HeadError::Malformed("invalid Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te.is_some() {
                return Err(HeadError::Malformed("several Transfer-Encoding fields"));
            }
            te = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive_token |= is_keep_alive;
                lists_fields |= !is_close && !is_keep_alive && !token.is_empty();
            }
        }
    }
    head.connection_lists_fields = lists_fields;
    head.keep_alive = match head.version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    let no_body = head_request
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    head.framing = if no_body {
        Framing::Empty
    } else {
        match (te, content_length) {
            (Some(_), Some(_)) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ))
            }
            (Some(v), None) if trim(v).eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            (Some(_), None) => return Err(HeadError::Malformed("unsupported Transfer-Encoding")),
            (None, Some(n)) => Framing::Length(n),
            (None, None) => {
                head.keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    Ok(Parse::Complete)
}

#[cfg(test)]
mod tests;

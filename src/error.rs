//! The gateway's error type and the ONE place an error becomes an HTTP status.
//!
//! Each variant says which side failed — the downstream client (4xx), the
//! upstream (502/503/504) — and the status it maps to. The message is the
//! public one: short, fixed, never carrying internal detail (addresses, OS
//! errors, parser positions). Details go to the operational log instead.

use crate::http::chunked::ChunkError;
use crate::http::head::HeadError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// 400: the request violates HTTP/1.1 syntax or framing (client side).
    #[error("bad request")]
    BadRequest,
    /// 400: the path is refused by normalisation or by the route (client side).
    #[error("invalid path")]
    InvalidPath,
    /// 400: a header the route requires is missing (client side).
    #[error("missing header")]
    MissingHeader,
    /// 400: a query parameter breaks the route's rules (client side).
    #[error("invalid query")]
    InvalidQuery,
    /// 400: a header value breaks the route's OpenAPI parameter (client side).
    #[error("invalid header")]
    InvalidHeader,
    /// 400: the body is not JSON, or breaks the route's JSON Schema (client side).
    #[error("invalid body")]
    InvalidBody,
    /// 403: the client address is denied, or not allowed (client side).
    #[error("forbidden")]
    Forbidden,
    /// 403: a CORS preflight from an origin or for a method/header the
    /// route does not allow (client side).
    #[error("cors refused")]
    CorsRefused,
    /// 404: no route matches (client side).
    #[error("no route")]
    NotFound,
    /// 421: a redirect listener does not know the requested host (client
    /// side; the gateway never redirects to a host it was not told about).
    #[error("misdirected request")]
    MisdirectedRequest,
    /// 405: the route does not accept this method (client side; `Allow` lists
    /// what it accepts, RFC 9110 15.5.6).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request head or body did not arrive in time (client side).
    #[error("request timeout")]
    RequestTimeout,
    /// 413: the body exceeds the route's `max_body_bytes` (client side).
    #[error("payload too large")]
    PayloadTooLarge,
    /// 429: a rate-limit policy of the route refuses the request (client
    /// side; `Retry-After` and `RateLimit` say when to come back).
    #[error("too many requests")]
    TooManyRequests,
    /// 415: the body's media type is not one the route accepts (client side).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 414: the request line exceeds `limits.max_request_line` (client side).
    #[error("uri too long")]
    UriTooLong,
    /// 431: the head exceeds `limits.max_header_bytes` or `limits.max_headers` (client side).
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// 502: upstream refused, reset, closed early or sent an invalid response.
    #[error("bad gateway")]
    BadGateway,
    /// 503: no usable endpoint in the cluster (all ejected).
    #[error("service unavailable")]
    Unavailable,
    /// 503: the route's concurrency cap and queue are full, or the queue
    /// wait timed out (client-visible overload, no upstream involved).
    #[error("overloaded")]
    Overloaded,
    /// 401: no valid credentials for the route (`WWW-Authenticate` says
    /// which kind of failure).
    #[error("unauthorized")]
    Unauthorized,
    /// 503: the route is rate limited, the shared rate-limit store is down
    /// and `rate_limit.redis.failure = "closed"`.
    #[error("rate limit store unavailable")]
    RateLimitUnavailable,
    /// 503: the route's token introspection endpoint gave no answer (down,
    /// too slow, or its queue is full).
    #[error("authentication unavailable")]
    AuthUnavailable,
    /// 504: upstream connect or response head timed out.
    #[error("gateway timeout")]
    GatewayTimeout,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        match self {
            GatewayError::BadRequest
            | GatewayError::InvalidPath
            | GatewayError::MissingHeader
            | GatewayError::InvalidQuery
            | GatewayError::InvalidHeader
            | GatewayError::InvalidBody => 400,
            GatewayError::Forbidden | GatewayError::CorsRefused => 403,
            GatewayError::NotFound => 404,
            GatewayError::MisdirectedRequest => 421,
            GatewayError::MethodNotAllowed => 405,
            GatewayError::UnsupportedMediaType => 415,
            GatewayError::TooManyRequests => 429,
            GatewayError::Unauthorized => 401,
            GatewayError::RequestTimeout => 408,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::UriTooLong => 414,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::BadGateway => 502,
            GatewayError::Unavailable
            | GatewayError::Overloaded
            | GatewayError::RateLimitUnavailable
            | GatewayError::AuthUnavailable => 503,
            GatewayError::GatewayTimeout => 504,
        }
    }

    /// The short text put in the JSON body's `error` field.
    pub fn public_message(self) -> &'static str {
        match self {
            GatewayError::BadRequest => "bad request",
            GatewayError::InvalidPath => "invalid request path",
            GatewayError::MissingHeader => "a required header is missing",
            GatewayError::InvalidQuery => "invalid query parameters",
            GatewayError::InvalidHeader => "invalid header value",
            GatewayError::InvalidBody => "request body does not match the schema",
            GatewayError::Forbidden => "forbidden",
            GatewayError::CorsRefused => "cross-origin request not allowed",
            GatewayError::NotFound => "no route matches this request",
            GatewayError::MisdirectedRequest => "unknown host",
            GatewayError::MethodNotAllowed => "method not allowed",
            GatewayError::UnsupportedMediaType => "unsupported media type",
            GatewayError::TooManyRequests => "rate limit exceeded",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::RequestTimeout => "request timeout",
            GatewayError::PayloadTooLarge => "request body too large",
            GatewayError::UriTooLong => "request line too long",
            GatewayError::HeadersTooLarge => "request header fields too large",
            GatewayError::BadGateway => "upstream error",
            GatewayError::Unavailable => "no upstream available",
            GatewayError::Overloaded => "too many requests in progress",
            GatewayError::RateLimitUnavailable => "rate limiting unavailable",
            GatewayError::AuthUnavailable => "authentication unavailable",
            GatewayError::GatewayTimeout => "upstream timeout",
        }
    }
}

impl From<HeadError> for GatewayError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::Malformed(_) => GatewayError::BadRequest,
            HeadError::UriTooLong => GatewayError::UriTooLong,
            HeadError::HeadersTooLarge => GatewayError::HeadersTooLarge,
        }
    }
}

impl From<ChunkError> for GatewayError {
    /// A request body with bad chunking (the response side maps to 502 itself).
    fn from(_: ChunkError) -> Self {
        GatewayError::BadRequest
    }
}

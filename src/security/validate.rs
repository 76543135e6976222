//! Per-route request rules, checked after routing and before anything is
//! sent upstream, so a refused request never reaches the service.
//!
//! | rule | status |
//! |---|---|
//! | `methods` | 405 with `Allow` |
//! | `max_uri_bytes`, `max_query_params` | 414 |
//! | `max_headers`, `max_header_bytes` | 431 |
//! | `required_headers` | 400 |
//! | `content_types` (requests with a body) | 415 |
//! | `query` rules: required, pattern, max length | 400 |
//!
//! With `json_schema`, the body is read whole (up to the route's body limit)
//! before anything goes upstream and checked against a JSON Schema (Draft
//! 2020-12): malformed JSON and schema violations get 400 naming where
//! (line and column, or the JSON pointer and the keyword that failed),
//! never the value. The upstream then receives the same bytes with a
//! `Content-Length`.
//!
//! Query values are percent-decoded (and `+` read as a space) before the
//! pattern and length checks; a value that does not decode to UTF-8 fails
//! its rule. Error bodies never echo the offending value.

use regex::Regex;

use crate::error::GatewayError;
use crate::http::head::{Framing, RequestView};
use crate::routing::MethodSet;
use crate::security::openapi::{ParamIn, ParamRule};

#[derive(Debug, Clone)]
pub struct QueryRule {
    pub name: Box<[u8]>,
    pub required: bool,
    /// Anchored by the config loader: the whole value must match.
    pub pattern: Option<Regex>,
    pub max_length: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Validate {
    /// Allowed methods and the `Allow` value listing them.
    pub methods: Option<(MethodSet, Box<[u8]>)>,
    pub required_headers: Box<[Box<[u8]>]>,
    /// Lowercase media types (`type/subtype`).
    pub content_types: Option<Box<[Box<[u8]>]>>,
    pub max_uri_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_query_params: Option<usize>,
    pub query: Box<[QueryRule]>,
    /// Compiled once at config load; shared read-only by every worker.
    pub json_schema: Option<std::sync::Arc<jsonschema::Validator>>,
    /// Whether a body must be present (OpenAPI `requestBody.required`);
    /// `None`: required for POST, PUT and PATCH.
    pub body_required: Option<bool>,
    /// Parameters from an OpenAPI operation.
    pub params: Box<[ParamRule]>,
}

/// Why a JSON body was refused; rendered into the error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProblem {
    /// Not JSON: where parsing stopped.
    Malformed { line: usize, column: usize },
    /// Valid JSON breaking the schema: the instance location (a JSON
    /// pointer, truncated) and the failing keyword.
    Schema { location: String, keyword: String },
}

/// Longest JSON pointer quoted back (pointers hold the client's keys).
const MAX_LOCATION: usize = 200;

impl Validate {
    /// Checks a buffered body against the route's schema.
    ///
    /// # Errors
    /// The [`BodyProblem`].
    pub fn check_json(&self, body: &[u8]) -> Result<(), BodyProblem> {
        let Some(schema) = &self.json_schema else {
            return Ok(());
        };
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| BodyProblem::Malformed {
                line: e.line(),
                column: e.column(),
            })?;
        match schema.validate(&value) {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut location = e.instance_path().as_str().to_string();
                if location.len() > MAX_LOCATION {
                    let mut cut = MAX_LOCATION;
                    while !location.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    location.truncate(cut);
                }
                Err(BodyProblem::Schema {
                    location,
                    keyword: e.kind().keyword().to_string(),
                })
            }
        }
    }
}

impl BodyProblem {
    /// The extra JSON fields of the error body (`,"key":value` pairs).
    pub fn render(&self, out: &mut Vec<u8>) {
        use crate::observability::access_log::{field_str, field_u64};
        match self {
            BodyProblem::Malformed { line, column } => {
                field_u64(out, "line", *line as u64);
                field_u64(out, "column", *column as u64);
            }
            BodyProblem::Schema { location, keyword } => {
                field_str(out, "location", location.as_bytes());
                field_str(out, "keyword", keyword.as_bytes());
            }
        }
    }
}

impl Validate {
    /// Checks a request; `scratch` holds decoded query values.
    ///
    /// # Errors
    /// The status-carrying error of the first rule broken.
    pub fn check(&self, req: &RequestView<'_>, scratch: &mut Vec<u8>) -> Result<(), GatewayError> {
        if let Some((set, _)) = &self.methods {
            if !set.contains(req.head.method) {
                return Err(GatewayError::MethodNotAllowed);
            }
        }
        let query = req.query().strip_prefix(b"?").unwrap_or_default();
        if let Some(max) = self.max_uri_bytes {
            if req.path().len() + req.query().len() > max {
                return Err(GatewayError::UriTooLong);
            }
        }
        if let Some(max) = self.max_query_params {
            let count = query
                .split(|&b| b == b'&')
                .filter(|p| !p.is_empty())
                .count();
            if count > max {
                return Err(GatewayError::UriTooLong);
            }
        }
        if self
            .max_headers
            .is_some_and(|max| req.head.headers.len() > max)
            || self.max_header_bytes.is_some_and(|max| req.head.len > max)
        {
            return Err(GatewayError::HeadersTooLarge);
        }
        if self
            .required_headers
            .iter()
            .any(|h| req.header(h).is_none_or(|v| v.trim_ascii().is_empty()))
        {
            return Err(GatewayError::MissingHeader);
        }
        if let Some(types) = &self.content_types {
            if req.head.framing != Framing::Empty {
                let media = req
                    .header(b"content-type")
                    .map(|v| {
                        v.split(|&b| b == b';')
                            .next()
                            .unwrap_or_default()
                            .trim_ascii()
                    })
                    .unwrap_or_default();
                if !types.iter().any(|t| media.eq_ignore_ascii_case(t)) {
                    return Err(GatewayError::UnsupportedMediaType);
                }
            }
        }
        for rule in self.query.iter() {
            let ok = check_query_param(query, &rule.name, rule.required, scratch, |text| {
                rule.max_length
                    .is_none_or(|max| text.chars().count() <= max)
                    && rule.pattern.as_ref().is_none_or(|p| p.is_match(text))
            });
            if !ok {
                return Err(GatewayError::InvalidQuery);
            }
        }
        for rule in self.params.iter() {
            match rule.location {
                ParamIn::Header => match req.header(&rule.name) {
                    None if rule.required => return Err(GatewayError::MissingHeader),
                    None => {}
                    Some(v) => {
                        let ok = std::str::from_utf8(v.trim_ascii()).is_ok_and(|t| rule.accepts(t));
                        if !ok {
                            return Err(GatewayError::InvalidHeader);
                        }
                    }
                },
                ParamIn::Query => {
                    let ok = check_query_param(query, &rule.name, rule.required, scratch, |t| {
                        rule.accepts(t)
                    });
                    if !ok {
                        return Err(GatewayError::InvalidQuery);
                    }
                }
            }
        }
        Ok(())
    }

    /// The `Allow` value for a 405.
    pub fn allow(&self) -> &[u8] {
        self.methods.as_ref().map_or(&b""[..], |(_, a)| a)
    }
}

/// Whether every occurrence of query parameter `name` passes `accepts`
/// (after decoding, as UTF-8), and one occurs when `required`.
fn check_query_param(
    query: &[u8],
    name: &[u8],
    required: bool,
    scratch: &mut Vec<u8>,
    accepts: impl Fn(&str) -> bool,
) -> bool {
    let mut seen = false;
    for param in query.split(|&b| b == b'&') {
        let (n, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], &param[i + 1..]),
            None => (param, &b""[..]),
        };
        if n != name {
            continue;
        }
        seen = true;
        decode_query_value(value, scratch);
        if !std::str::from_utf8(scratch).is_ok_and(&accepts) {
            return false;
        }
    }
    seen || !required
}

/// `application/x-www-form-urlencoded` value decoding into `out`; an invalid
/// escape is kept as is.
pub fn decode_query_value(v: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    v.get(i + 1).copied().and_then(hex),
                    v.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode() {
        let mut out = Vec::new();
        decode_query_value(b"a+b%20c%2", &mut out);
        assert_eq!(out, b"a b c%2");
        decode_query_value(b"%C3%A9", &mut out);
        assert_eq!(std::str::from_utf8(&out).unwrap(), "é");
    }
}

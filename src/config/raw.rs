//! Raw configuration: the TOML file exactly as serde reads it.
//!
//! Every table rejects unknown keys so a typo fails loudly instead of silently
//! falling back to a default. Nothing here is validated across fields; that is
//! `validate.rs`'s job. Defaults live in `super::defaults` so the documentation
//! (docs/configuration.md) and the code name the same constants.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::defaults as d;
use super::units::{ByteSize, Duration};
use crate::observability::access_log::QueryMode;
use crate::observability::trace_context::TraceMode;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub audit_log: RawAuditLog,
    #[serde(default)]
    pub security: RawSecurity,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub auth: super::raw_auth::RawAuth,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `workers = "auto"` or a positive number.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum RawWorkers {
    Count(i64),
    Named(AutoWord),
}

/// The single word `auto`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AutoWord {
    Auto,
}

/// Which monoio driver a worker runs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring when the kernel offers it, epoll otherwise (logged once).
    #[default]
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// Always the readiness (epoll) driver.
    Epoll,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "d::workers")]
    pub workers: RawWorkers,
    #[serde(default)]
    pub driver: DriverChoice,
    #[serde(default = "d::pin_workers")]
    pub pin_workers: bool,
    #[serde(default = "d::drain_timeout")]
    pub drain_timeout: Duration,
    #[serde(default = "d::io_uring_entries")]
    pub io_uring_entries: u32,
    #[serde(default = "d::io_uring_defer_taskrun")]
    pub io_uring_defer_taskrun: bool,
    #[serde(default = "d::io_uring_wait_batch")]
    pub io_uring_wait_batch: u32,
    #[serde(default = "d::io_uring_wait_batch_us")]
    pub io_uring_wait_batch_us: u32,
    #[serde(default = "d::io_uring_wait_batch_busy_percent")]
    pub io_uring_wait_batch_busy_percent: u32,
    #[serde(default)]
    pub via: bool,
    #[serde(default = "d::trace_context")]
    pub trace_context: TraceMode,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            workers: d::workers(),
            driver: DriverChoice::default(),
            pin_workers: d::pin_workers(),
            drain_timeout: d::drain_timeout(),
            io_uring_entries: d::io_uring_entries(),
            io_uring_defer_taskrun: d::io_uring_defer_taskrun(),
            io_uring_wait_batch: d::io_uring_wait_batch(),
            io_uring_wait_batch_us: d::io_uring_wait_batch_us(),
            io_uring_wait_batch_busy_percent: d::io_uring_wait_batch_busy_percent(),
            via: false,
            trace_context: d::trace_context(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    #[serde(default = "d::request_head")]
    pub request_head: Duration,
    #[serde(default = "d::request_body_idle")]
    pub request_body_idle: Duration,
    #[serde(default = "d::keepalive_idle")]
    pub keepalive_idle: Duration,
    #[serde(default = "d::keepalive_park_after")]
    pub keepalive_park_after: Duration,
    #[serde(default = "d::upstream_connect")]
    pub upstream_connect: Duration,
    #[serde(default = "d::upstream_response_head")]
    pub upstream_response_head: Duration,
    #[serde(default = "d::upstream_idle")]
    pub upstream_idle: Duration,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            request_head: d::request_head(),
            request_body_idle: d::request_body_idle(),
            keepalive_idle: d::keepalive_idle(),
            keepalive_park_after: d::keepalive_park_after(),
            upstream_connect: d::upstream_connect(),
            upstream_response_head: d::upstream_response_head(),
            upstream_idle: d::upstream_idle(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default = "d::max_request_line")]
    pub max_request_line: ByteSize,
    #[serde(default = "d::max_header_bytes")]
    pub max_header_bytes: ByteSize,
    #[serde(default = "d::max_headers")]
    pub max_headers: u32,
    #[serde(default = "d::max_body_bytes")]
    pub max_body_bytes: ByteSize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_line: d::max_request_line(),
            max_header_bytes: d::max_header_bytes(),
            max_headers: d::max_headers(),
            max_body_bytes: d::max_body_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "d::admin_enabled")]
    pub enabled: bool,
    #[serde(default = "d::admin_address")]
    pub address: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: d::admin_enabled(),
            address: d::admin_address(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default = "d::log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: d::log_level(),
            format: LogFormat::default(),
        }
    }
}

/// `[security]`: client address, IP filtering, response headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurity {
    /// CIDRs whose `X-Forwarded-For` is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// How often list files are checked for changes.
    #[serde(default = "d::list_watch_interval")]
    pub list_watch_interval: Duration,
    #[serde(default)]
    pub ip_filter: RawIpFilter,
    #[serde(default)]
    pub response_headers: RawResponseHeaders,
}

impl Default for RawSecurity {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            list_watch_interval: d::list_watch_interval(),
            ip_filter: RawIpFilter::default(),
            response_headers: RawResponseHeaders::default(),
        }
    }
}

/// Allow and deny lists (global or per route).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpFilter {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow_files: Vec<String>,
    #[serde(default)]
    pub deny_files: Vec<String>,
}

/// Response header policy (global or per route).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponseHeaders {
    /// The default security header set; inherits when absent.
    pub defaults: Option<bool>,
    /// Fields set on every response, replacing upstream values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields removed from upstream responses (added to the defaults).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Keep fields the global default removes (e.g. "server").
    #[serde(default)]
    pub keep: Vec<String>,
}

/// `[routes.validate]`: what a request must look like to be forwarded.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    /// Allowed methods; others get 405 with `Allow`.
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// Allowed media types of request bodies (415).
    pub content_types: Option<Vec<String>>,
    pub max_uri_bytes: Option<ByteSize>,
    pub max_headers: Option<u32>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_query_params: Option<u32>,
    #[serde(default)]
    pub query: Vec<RawQueryRule>,
    /// A JSON Schema (Draft 2020-12) file request bodies must satisfy.
    pub json_schema: Option<String>,
    /// Take parameter and body rules from an OpenAPI 3 operation.
    pub openapi: Option<RawOpenApi>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenApi {
    /// The document (JSON or YAML), relative to the config file.
    pub document: String,
    /// The `operationId` whose rules apply.
    pub operation: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryRule {
    pub name: String,
    #[serde(default)]
    pub required: bool,
    pub pattern: Option<String>,
    pub max_length: Option<u32>,
}

/// `[routes.cors]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<String>,
    #[serde(default = "d::cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "d::cors_max_age")]
    pub max_age: Duration,
}

/// `[rate_limit]`: shared settings and the named policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    #[serde(default = "d::rate_limit_sync_interval")]
    pub sync_interval: Duration,
    #[serde(default = "d::rate_limit_table_size")]
    pub table_size: u32,
    #[serde(default = "d::rate_limit_headers")]
    pub headers: bool,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
    /// Cluster mode: share the counts with other instances through Redis.
    pub redis: Option<RawRedis>,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            sync_interval: d::rate_limit_sync_interval(),
            table_size: d::rate_limit_table_size(),
            headers: d::rate_limit_headers(),
            policies: Vec::new(),
            redis: None,
        }
    }
}

/// `[rate_limit.redis]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`.
    pub url: String,
    /// "open" (limits per instance while Redis is down) or "closed" (503).
    #[serde(default = "d::redis_failure")]
    pub failure: String,
    #[serde(default = "d::redis_timeout")]
    pub timeout: Duration,
    #[serde(default = "d::redis_key_prefix")]
    pub key_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    /// Requests of the route running at once (split over the workers).
    pub max_in_flight: u32,
    /// Requests waiting for a slot (split over the workers); 0 = none.
    #[serde(default)]
    pub queue: u32,
    #[serde(default = "d::queue_timeout")]
    pub queue_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: String,
    /// Requests per `per`.
    pub rate: u64,
    pub per: Duration,
    /// Requests admitted at once; defaults to `rate`.
    pub burst: Option<u64>,
    /// "client_ip", "route", "header:<name>"; several combine.
    #[serde(default = "d::rate_limit_key")]
    pub key: Vec<String>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// "off", "stdout", "stderr" or a file path.
    #[serde(default = "d::access_log_destination")]
    pub destination: String,
    #[serde(default = "d::access_log_query")]
    pub query: QueryMode,
    /// Bytes a worker collects before handing them to the writer.
    #[serde(default = "d::log_batch")]
    pub batch: ByteSize,
    /// Batches waiting for the writer before lines are dropped.
    #[serde(default = "d::log_queue")]
    pub queue: u32,
    /// A partly filled batch is handed over after this long.
    #[serde(default = "d::log_flush_interval")]
    pub flush_interval: Duration,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        Self {
            destination: d::access_log_destination(),
            query: d::access_log_query(),
            batch: d::log_batch(),
            queue: d::log_queue(),
            flush_interval: d::log_flush_interval(),
        }
    }
}

/// `[audit_log]`: security-relevant events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditLog {
    #[serde(default = "d::audit_log_destination")]
    pub destination: String,
}

impl Default for RawAuditLog {
    fn default() -> Self {
        Self {
            destination: d::audit_log_destination(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    /// Expect a PROXY protocol v1/v2 header before each connection's bytes.
    #[serde(default)]
    pub proxy_protocol: bool,
    #[serde(default = "d::max_connections")]
    pub max_connections: u32,
    #[serde(default = "d::backlog")]
    pub backlog: u32,
    /// Terminate TLS on this listener.
    pub tls: Option<super::raw_tls::RawTls>,
    /// Redirect every request to https instead of serving it.
    pub redirect_https: Option<super::raw_tls::RawRedirect>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    ConsistentHash,
}

/// An endpoint is either `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Address(String),
    Weighted(RawWeightedEndpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedEndpoint {
    pub address: String,
    #[serde(default = "d::weight")]
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    pub endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    pub balancer: BalancerKind,
    /// Header whose value feeds `consistent_hash`; the client IP when absent.
    pub hash_header: Option<String>,
    #[serde(default)]
    pub pool: RawPool,
    #[serde(default = "d::max_fails")]
    pub max_fails: u32,
    #[serde(default = "d::fail_timeout")]
    pub fail_timeout: Duration,
    #[serde(default = "d::connect_attempts")]
    pub connect_attempts: u32,
    /// TLS to the endpoints.
    #[serde(default)]
    pub tls: super::raw_tls::RawUpstreamTls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default = "d::pool_max_idle")]
    pub max_idle: u32,
    #[serde(default = "d::pool_idle_timeout")]
    pub idle_timeout: Duration,
    #[serde(default = "d::pool_max_requests")]
    pub max_requests: u32,
}

impl Default for RawPool {
    fn default() -> Self {
        Self {
            max_idle: d::pool_max_idle(),
            idle_timeout: d::pool_idle_timeout(),
            max_requests: d::pool_max_requests(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub proxy: Option<RawProxy>,
    pub respond: Option<RawRespond>,
    /// Overrides `limits.max_body_bytes` for this route.
    pub max_body_bytes: Option<ByteSize>,
    /// Share of this route's requests written to the access log (0.0-1.0).
    #[serde(default = "d::access_log_sample")]
    pub access_log_sample: f64,
    pub ip_filter: Option<RawIpFilter>,
    pub response_headers: Option<RawResponseHeaders>,
    pub validate: Option<RawValidate>,
    pub cors: Option<RawCors>,
    /// Names of `[[rate_limit.policies]]` applied to this route.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// A cap on this route's concurrent requests.
    pub concurrency: Option<RawConcurrency>,
    /// Who may use the route.
    pub auth: Option<super::raw_auth::RawRouteAuth>,
    /// The gateway answers as its OAuth2 "token" endpoint or publishes its
    /// "jwks".
    pub oauth2: Option<String>,
    /// Path properties this route accepts ("encoded_slash", "backslash",
    /// "double_encoding", "invalid_utf8").
    #[serde(default)]
    pub allow_path: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<String>,
    pub path: Option<String>,
    pub prefix: Option<String>,
    pub segment_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
    /// Match the path case-insensitively (ASCII).
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    /// Exact value; presence only when absent.
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub cluster: String,
    /// Replace the matched `prefix`/`segment_prefix` with this string ("" strips it).
    pub rewrite_prefix: Option<String>,
    /// Send this Host to the upstream instead of the client's.
    pub host_rewrite: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

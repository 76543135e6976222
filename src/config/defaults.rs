//! Every default value in one place. docs/configuration.md quotes these; keep
//! the two in step. Sizes are bytes, durations are what their name says.

use std::time::Duration as StdDuration;

use super::raw::{AutoWord, RawWorkers};
use super::units::{ByteSize, Duration};
use crate::observability::access_log::QueryMode;
use crate::observability::trace_context::TraceMode;

/// Total time a client has to send a complete request head (slowloris defence).
pub const REQUEST_HEAD: StdDuration = StdDuration::from_secs(10);
/// Longest pause between two reads of a request body.
pub const REQUEST_BODY_IDLE: StdDuration = StdDuration::from_secs(30);
/// How long an idle downstream keep-alive connection is kept open.
pub const KEEPALIVE_IDLE: StdDuration = StdDuration::from_secs(60);
/// How long an idle keep-alive connection keeps its read armed before it
/// parks (see `http::conn`).
pub const KEEPALIVE_PARK_AFTER: StdDuration = StdDuration::from_secs(1);
/// Upstream TCP connect.
pub const UPSTREAM_CONNECT: StdDuration = StdDuration::from_secs(3);
/// From the end of the request to the complete upstream response head.
pub const UPSTREAM_RESPONSE_HEAD: StdDuration = StdDuration::from_secs(60);
/// Longest pause between two reads of an upstream response body.
pub const UPSTREAM_IDLE: StdDuration = StdDuration::from_secs(60);
/// How long in-flight requests may run after SIGTERM.
pub const DRAIN_TIMEOUT: StdDuration = StdDuration::from_secs(30);

/// Request line (method, target, version) longer than this: 414.
pub const MAX_REQUEST_LINE: u64 = 8 * 1024;
/// Whole request head longer than this: 431.
pub const MAX_HEADER_BYTES: u64 = 32 * 1024;
/// More header fields than this: 431.
pub const MAX_HEADERS: u32 = 100;
/// Request body larger than this: 413 (per route override `max_body_bytes`).
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// Downstream connections one worker serves at once; more wait in the backlog.
pub const MAX_CONNECTIONS: u32 = 10_000;
/// listen(2) backlog of each worker's socket.
pub const BACKLOG: u32 = 1024;
/// Submission queue entries of each worker's io_uring.
pub const IO_URING_ENTRIES: u32 = 1024;

/// Idle pooled connections kept per endpoint per worker.
pub const POOL_MAX_IDLE: u32 = 64;
/// A pooled connection idle longer than this is closed instead of reused.
pub const POOL_IDLE_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// Requests sent over one upstream connection before it is retired.
pub const POOL_MAX_REQUESTS: u32 = 10_000;
/// Consecutive connect failures that eject an endpoint.
pub const MAX_FAILS: u32 = 1;
/// How long an ejected endpoint is skipped.
pub const FAIL_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Endpoints tried when connecting fails (connect errors are always safe to retry).
pub const CONNECT_ATTEMPTS: u32 = 2;

pub const ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Workers exchange their rate-limit admissions this often (the accuracy
/// bound grows with it; see ratelimit/mod.rs).
pub const RATE_LIMIT_SYNC_INTERVAL: StdDuration = StdDuration::from_millis(20);
/// Keys each worker tracks per process (16 bytes each: 1 MiB).
pub const RATE_LIMIT_TABLE_SIZE: u32 = 65_536;

/// List files (IP allow/deny) are checked for changes this often.
pub const LIST_WATCH_INTERVAL: StdDuration = StdDuration::from_secs(2);
/// CORS preflight answers are cached this long by browsers.
pub const CORS_MAX_AGE: StdDuration = StdDuration::from_secs(600);
/// Response fields that only advertise the upstream's software.
pub const REMOVED_RESPONSE_HEADERS: [&str; 4] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
];
/// The default security header set, added when the upstream sent none.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

/// Access logging is opt-in: a busy gateway writes a line per request.
pub const ACCESS_LOG_DESTINATION: &str = "off";
/// Audit events are rare and matter: on by default, beside the operational log.
pub const AUDIT_LOG_DESTINATION: &str = "stderr";
/// Per-worker log batch handed to the writer at once.
pub const LOG_BATCH: u64 = 64 * 1024;
/// Batches queued for the writer before workers drop lines (64 x 64 KiB = 4 MiB).
pub const LOG_QUEUE: u32 = 64;
/// A partly filled batch waits at most this long.
pub const LOG_FLUSH_INTERVAL: StdDuration = StdDuration::from_millis(100);

pub fn workers() -> RawWorkers {
    RawWorkers::Named(AutoWord::Auto)
}
pub fn pin_workers() -> bool {
    true
}
pub fn drain_timeout() -> Duration {
    Duration(DRAIN_TIMEOUT)
}
pub fn io_uring_entries() -> u32 {
    IO_URING_ENTRIES
}
pub fn io_uring_defer_taskrun() -> bool {
    true
}
/// On, but only for a busy worker (`io_uring_wait_batch_busy_percent`): a
/// held completion is latency the client pays (docs/PERFORMANCE.md,
/// "Paced load", "Batching only when busy").
pub fn io_uring_wait_batch() -> u32 {
    64
}
pub fn io_uring_wait_batch_us() -> u32 {
    50
}
/// Above what a worker uses at half of its saturated rate (about 60% on the
/// reference machine), below what it uses saturated (75-80%).
pub fn io_uring_wait_batch_busy_percent() -> u32 {
    70
}
pub fn request_head() -> Duration {
    Duration(REQUEST_HEAD)
}
pub fn request_body_idle() -> Duration {
    Duration(REQUEST_BODY_IDLE)
}
pub fn keepalive_idle() -> Duration {
    Duration(KEEPALIVE_IDLE)
}
pub fn keepalive_park_after() -> Duration {
    Duration(KEEPALIVE_PARK_AFTER)
}
pub fn upstream_connect() -> Duration {
    Duration(UPSTREAM_CONNECT)
}
pub fn upstream_response_head() -> Duration {
    Duration(UPSTREAM_RESPONSE_HEAD)
}
pub fn upstream_idle() -> Duration {
    Duration(UPSTREAM_IDLE)
}
pub fn max_request_line() -> ByteSize {
    ByteSize(MAX_REQUEST_LINE)
}
pub fn max_header_bytes() -> ByteSize {
    ByteSize(MAX_HEADER_BYTES)
}
pub fn max_headers() -> u32 {
    MAX_HEADERS
}
pub fn max_body_bytes() -> ByteSize {
    ByteSize(MAX_BODY_BYTES)
}
pub fn admin_enabled() -> bool {
    true
}
pub fn admin_address() -> String {
    ADMIN_ADDRESS.to_string()
}
pub fn log_level() -> String {
    "info".to_string()
}
pub fn max_connections() -> u32 {
    MAX_CONNECTIONS
}
pub fn backlog() -> u32 {
    BACKLOG
}
pub fn weight() -> u32 {
    1
}
pub fn pool_max_idle() -> u32 {
    POOL_MAX_IDLE
}
pub fn pool_idle_timeout() -> Duration {
    Duration(POOL_IDLE_TIMEOUT)
}
pub fn pool_max_requests() -> u32 {
    POOL_MAX_REQUESTS
}
pub fn max_fails() -> u32 {
    MAX_FAILS
}
pub fn fail_timeout() -> Duration {
    Duration(FAIL_TIMEOUT)
}
pub fn connect_attempts() -> u32 {
    CONNECT_ATTEMPTS
}
pub fn trace_context() -> TraceMode {
    TraceMode::Propagate
}
pub fn access_log_destination() -> String {
    ACCESS_LOG_DESTINATION.to_string()
}
pub fn audit_log_destination() -> String {
    AUDIT_LOG_DESTINATION.to_string()
}
pub fn access_log_query() -> QueryMode {
    QueryMode::Redact
}
pub fn log_batch() -> ByteSize {
    ByteSize(LOG_BATCH)
}
pub fn log_queue() -> u32 {
    LOG_QUEUE
}
pub fn log_flush_interval() -> Duration {
    Duration(LOG_FLUSH_INTERVAL)
}
pub fn access_log_sample() -> f64 {
    1.0
}
pub fn list_watch_interval() -> Duration {
    Duration(LIST_WATCH_INTERVAL)
}
pub fn cors_max_age() -> Duration {
    Duration(CORS_MAX_AGE)
}
pub fn cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
pub fn rate_limit_sync_interval() -> Duration {
    Duration(RATE_LIMIT_SYNC_INTERVAL)
}
pub fn rate_limit_table_size() -> u32 {
    RATE_LIMIT_TABLE_SIZE
}
pub fn rate_limit_headers() -> bool {
    true
}
pub fn redis_failure() -> String {
    "open".into()
}
pub fn redis_timeout() -> Duration {
    Duration(StdDuration::from_millis(250))
}
pub fn redis_key_prefix() -> String {
    "ringgate:rl:".into()
}
pub fn auth_cache_entries() -> u32 {
    4096
}
pub fn api_key_header() -> String {
    "x-api-key".into()
}
pub fn jwt_leeway() -> Duration {
    Duration(StdDuration::from_secs(60))
}
pub fn jwt_max_token_bytes() -> ByteSize {
    ByteSize(8 * 1024)
}
pub fn jwks_refresh() -> Duration {
    Duration(StdDuration::from_secs(300))
}
pub fn jwks_refetch_min() -> Duration {
    Duration(StdDuration::from_secs(10))
}
pub fn jwks_fetch_timeout() -> Duration {
    Duration(StdDuration::from_secs(5))
}
pub fn token_from() -> String {
    "bearer".into()
}
pub fn token_lifetime() -> Duration {
    Duration(StdDuration::from_secs(900))
}
pub fn jwt_groups_claim() -> String {
    "groups".into()
}
pub fn introspection_threads() -> u32 {
    4
}
pub fn introspection_timeout() -> Duration {
    Duration(StdDuration::from_secs(2))
}
pub fn introspection_max_ttl() -> Duration {
    Duration(StdDuration::from_secs(300))
}
pub fn introspection_negative_ttl() -> Duration {
    Duration(StdDuration::from_secs(10))
}
pub fn rate_limit_key() -> Vec<String> {
    vec!["client_ip".to_string()]
}
pub fn queue_timeout() -> Duration {
    Duration(StdDuration::from_secs(1))
}
pub fn yes() -> bool {
    true
}
pub fn tls_unknown_sni() -> String {
    "default".into()
}
pub fn tls_min_version() -> String {
    "1.2".into()
}
pub fn tls_handshake_timeout() -> Duration {
    Duration(StdDuration::from_secs(10))
}
pub fn tls_client_auth() -> String {
    "none".into()
}
/// One year, what the HSTS preload list asks for.
pub fn hsts_max_age() -> Duration {
    Duration(StdDuration::from_secs(31_536_000))
}
pub fn redirect_status() -> u16 {
    308
}
pub fn https_port() -> u16 {
    443
}

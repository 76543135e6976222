//! Configuration: TOML file -> raw serde types -> validation -> immutable [`Config`].
//!
//! - `raw.rs`, `raw_auth.rs`: the file as serde reads it (unknown keys
//!   rejected).
//! - `validate.rs`: cross-field checks, address resolution, route compilation.
//! - `diagnostic.rs`: every error as `file:line:col: key.path: message`.
//! - `defaults.rs`: every default value, quoted by docs/configuration.md.
//!
//! Workers share one `Arc<Config>` snapshot and never mutate it; a reload
//! builds a whole new snapshot and hands it to each worker.
//!
//! # Adding a key
//! Add it to the raw type with a `defaults` constant, carry it into the
//! validated type in `validate.rs` (with a located error for bad values),
//! document it in docs/configuration.md and in config/ringgate.toml.

pub mod defaults;
mod diagnostic;
mod raw;
mod raw_auth;
mod raw_tls;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use diagnostic::{ConfigError, Diagnostic};
pub use raw::{BalancerKind, DriverChoice, LogFormat};

use crate::observability::access_log::QueryMode;
use crate::observability::log_stream::Destination;
use crate::observability::trace_context::TraceMode;
pub use units::{parse_duration, parse_size};

use crate::http::head::HeadLimits;
use crate::routing::Router;

/// The validated, immutable configuration every worker reads.
#[derive(Debug)]
pub struct Config {
    /// Number of worker threads (one per core with `workers = "auto"`).
    pub workers: usize,
    pub driver: DriverChoice,
    pub pin_workers: bool,
    pub io_uring_entries: u32,
    /// Run io_uring completion work only when the worker waits for it
    /// (`IORING_SETUP_DEFER_TASKRUN`), instead of interrupting it.
    pub io_uring_defer_taskrun: bool,
    /// The most io_uring completions one wait of a worker collects (1:
    /// every wait returns at the first).
    pub io_uring_wait_batch: u32,
    /// How long, in microseconds, a wait that has a completion may hold it
    /// for more.
    pub io_uring_wait_batch_us: u32,
    /// Batch only while the worker's CPU time is at least this share of
    /// wall time, in percent (0: always).
    pub io_uring_wait_batch_busy_percent: u32,
    /// Add `Via: 1.1 ringgate` both ways (RFC 9110 7.6.3).
    pub via: bool,
    pub drain_timeout: Duration,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Admin listener address; `None` when disabled.
    pub admin: Option<SocketAddr>,
    pub log: LogConfig,
    pub access_log: AccessLogConfig,
    /// Audit log destination; `None` when off.
    pub audit_log: Option<Destination>,
    /// W3C trace context: pass through, or also start when absent.
    pub trace_context: TraceMode,
    /// Trusted proxies, global IP filter, gateway response headers.
    pub security: crate::security::Security,
    /// Rate-limit policies and their shared settings.
    pub rate_limit: crate::ratelimit::RateLimitConfig,
    /// JWT issuers, API-key consumers.
    pub auth: crate::auth::AuthConfig,
    pub listeners: Vec<ListenerConfig>,
    /// Client-certificate header names of every TLS listener: removed
    /// from every request, whichever listener it came in on.
    pub client_cert_headers: Box<[Box<[u8]>]>,
    pub clusters: Vec<ClusterConfig>,
    pub router: Router,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub request_head: Duration,
    pub request_body_idle: Duration,
    pub keepalive_idle: Duration,
    /// Zero parks at once.
    pub keepalive_park_after: Duration,
    pub upstream_connect: Duration,
    pub upstream_response_head: Duration,
    pub upstream_idle: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub head: HeadLimits,
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive (`info`, `ringgate=debug,warn`, ...).
    pub level: String,
    pub format: LogFormat,
}

/// `[access_log]`. The destination and queue are fixed at start; the rest
/// follows reloads.
#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    /// `None` when off.
    pub destination: Option<Destination>,
    pub query: QueryMode,
    pub batch_bytes: usize,
    pub queue: usize,
    pub flush_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Per worker; further connections wait in the kernel backlog.
    pub max_connections: u32,
    pub backlog: u32,
    /// Read a PROXY protocol header first; its source is the client.
    pub proxy_protocol: bool,
    /// TLS termination, when configured.
    pub tls: Option<std::sync::Arc<crate::tls::TlsListener>>,
    /// Answer every request with a redirect to https, when configured.
    pub redirect: Option<std::sync::Arc<crate::routing::redirect::HttpsRedirect>>,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub balancer: BalancerKind,
    /// Lowercase header name hashed by `consistent_hash`; client IP when `None`.
    pub hash_header: Option<Box<[u8]>>,
    pub pool: PoolConfig,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub connect_attempts: u32,
    /// TLS to the endpoints, when configured.
    pub tls: Option<std::sync::Arc<crate::tls::client::UpstreamTls>>,
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    pub weight: u32,
    /// With cluster TLS: the SNI sent and the name verified (the
    /// configured `server_name`, else the host as written).
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub max_idle: u32,
    pub idle_timeout: Duration,
    pub max_requests: u32,
}

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem with its file, line, column and key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::whole_file(&name, format!("cannot read file: {e}")))?;
        Self::parse(&name, &text)
    }

    /// Parses and validates config text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem found.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        validate::parse(file, text)
    }
}

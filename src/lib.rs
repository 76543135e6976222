//! ringgate: a thread-per-core io_uring API gateway.
//!
//! # Layout
//! - `config`: TOML -> raw serde types -> validation -> immutable `Config`.
//! - `control`: the control thread: start-up, signals, reload, shutdown.
//! - `worker`: one pinned thread per core with its monoio runtime, listeners,
//!   per-core state, drain.
//! - `http`: the request pipeline (`conn`), strict head parsing (`head`),
//!   chunked coding (`chunked`), body streaming (`body`), forwarding
//!   (`proxy`), gateway-made responses (`response`).
//! - `routing`: the compiled route table.
//! - `upstream`: clusters, balancers, keep-alive pools, passive health.
//! - `ratelimit`: GCRA policies, per-worker tables, cross-core sync, the
//!   Redis-backed cluster mode.
//! - `auth`: JWT issuers and keys (files, JWKS, OIDC discovery), API-key
//!   consumers, per-route authorization, identity headers, the per-worker
//!   verified-token cache, the OAuth2 client-credentials token endpoint.
//! - `security`: path normalisation, client address behind trusted proxies,
//!   IP allow/deny lists, response header policy, CORS, request validation.
//! - `admin`: the admin listener (`/healthz`, `/readyz`, `/metrics`,
//!   `/stats/latency`, `/stats/allocations`).
//! - `observability`: metric names and per-worker counters, latency
//!   histograms, access and audit logs, trace context, operational logging.
//! - `error`: the gateway error and its one mapping to HTTP statuses.
//! - `sys`: the single place with `unsafe` (a socket peek, the counting allocator,
//!   byte views of monoio's owned buffers).
//!
//! docs/DESIGN.md draws how these fit together.

#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod control;
pub mod error;
pub mod http;
#[cfg(test)]
mod mutate;
pub mod observability;
pub mod ratelimit;
pub mod routing;
pub mod security;
pub mod sys;
pub mod tls;
pub mod upstream;
pub mod worker;

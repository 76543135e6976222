//! The integration tests: the real `ringgate` binary against real servers
//! on loopback (see `common`). They build as one test binary, so the test
//! code is linked once rather than once per file; each file is a module,
//! and `cargo test --release --test integration <file>::` runs one file.

mod common;
/// The seeded mutator the parsers' unit tests use.
#[path = "../src/mutate.rs"]
mod mutate;

mod allocations;
mod auth;
mod auth_introspect;
mod auth_jwks;
mod auth_token;
mod framing;
mod lifecycle;
mod observability;
mod proxy;
mod ratelimit;
mod ratelimit_cluster;
mod robustness;
mod security;
mod streaming;
mod tls;
mod tls_sessions;
mod upstream_tls;
mod upstreams;

//! HTTP/1.1 on both sides of the gateway.
//!
//! - `conn`: a downstream connection and the request pipeline.
//! - `log_phase`: what a request reports and the phase that runs last
//!   (counters, latency, access log, audit events).
//! - `head`: strict request/response head parsing and framing rules.
//! - `chunked`: the chunked transfer coding decoder.
//! - `body`: streaming bodies with bounded memory.
//! - `proxy`: forwarding to upstreams, header rewriting.
//! - `response`: gateway-made responses and request ids.
//! - `io`: owned-buffer helpers over monoio.

pub mod body;
pub mod chunked;
pub mod conn;
pub mod head;
pub mod io;
pub mod log_phase;
pub mod proxy;
pub mod response;

//! The admin listener: a separate address (loopback by default) for
//! operators and orchestrators, served by its own thread so that nothing it
//! does competes with the workers.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once every worker accepts and the config is loaded,
//!   503 before that and while draining.
//! - `GET /metrics`: Prometheus text format (see `observability::metrics`).
//! - `GET /stats/latency`: per-route request and upstream latency
//!   percentiles in milliseconds, JSON; `?format=hgrm` gives HdrHistogram's
//!   percentile distribution (all routes merged, or `&route=NAME`, and
//!   `&kind=upstream` for upstream durations).
//! - `GET /stats/allocations`: heap allocations made by each worker since
//!   start, `{"workers":[n0,n1,...]}`; flat under steady traffic.
//!
//! Metrics and latency ask every worker for a copy of its counters (a
//! per-core message) and merge the answers here. Every call except the
//! continually polled `/healthz`, `/readyz` and `/metrics` is written to the
//! audit log.
//!
//! # Adding an endpoint
//! Add a branch to [`route`], a test in tests/observability.rs or
//! tests/lifecycle.rs, and a line in docs/configuration.md under `[admin]`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use monoio::io::AsyncWriteRent;
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;

use crate::http::head::{parse_request, HeadLimits, Method, Parse, RequestHead, RequestView};
use crate::http::io::{read_into, write_all};
use crate::http::response::{push_u64, status_line};
use crate::observability::access_log::{field_str, field_u64};
use crate::observability::latency;
use crate::observability::metrics::{merge_routes, Exporter, ProcessFigures, WorkerReport};
use crate::observability::Logs;
use crate::security::validate::decode_query_value;
use crate::sys::AllocCounter;
use crate::worker::Control;

/// What the admin endpoints report.
pub struct AdminState {
    pub ready: AtomicBool,
    /// Per-worker allocation counters (written by their workers only).
    allocations: &'static [AllocCounter],
    /// Where collection requests go; set once the workers run.
    workers: OnceLock<Vec<async_channel::Sender<Control>>>,
    pub reloads_ok: AtomicU64,
    pub reloads_refused: AtomicU64,
    /// The cluster store's sync figures (all zero when not configured).
    pub store: Arc<crate::ratelimit::cluster::StoreFigures>,
    /// Signing-key fetches per issuer.
    pub jwks: Arc<crate::auth::jwks::JwksFigures>,
    pub introspections: Arc<crate::auth::introspect::IntrospectFigures>,
    /// `(listener, certificate file, notAfter)` of the serving config.
    pub certificates: std::sync::Mutex<Vec<(String, String, i64)>>,
    logs: Arc<Logs>,
}

impl AdminState {
    pub fn new(allocations: &'static [AllocCounter], logs: Arc<Logs>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            allocations,
            workers: OnceLock::new(),
            reloads_ok: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            store: Arc::default(),
            jwks: Arc::default(),
            introspections: Arc::default(),
            certificates: std::sync::Mutex::default(),
            logs,
        }
    }

    /// Records the serving config's certificates for the expiry metric.
    pub fn set_certificates(&self, config: &crate::config::Config) {
        let list = config
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref().map(|t| (l, t)))
            .flat_map(|(l, t)| {
                t.certificates
                    .iter()
                    .map(|c| (l.name.clone(), c.file.clone(), c.not_after))
            })
            .collect();
        if let Ok(mut c) = self.certificates.lock() {
            *c = list;
        }
    }

    pub fn set_workers(&self, workers: Vec<async_channel::Sender<Control>>) {
        let _ = self.workers.set(workers);
    }
}

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4096,
    max_header_bytes: 16 * 1024,
    max_headers: 64,
};
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape waits for a busy worker's report.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(5);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts the admin thread on an already bound socket.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn(socket: std::net::TcpListener, state: Arc<AdminState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => rt.block_on(accept_loop(socket, state)),
                Err(e) => tracing::error!(error = %e, "admin listener cannot start its runtime"),
            }
        })?;
    Ok(())
}

/// Binds the admin address (port 0 picks a free port).
///
/// # Errors
/// The bind error.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

async fn accept_loop(socket: std::net::TcpListener, state: Arc<AdminState>) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener failed");
            return;
        }
    };
    let exporter = std::rc::Rc::new(Exporter::default());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(handle(stream, peer, state.clone(), exporter.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A response: status, content type, body.
type Reply = (u16, &'static str, Cow<'static, str>);

/// One request per connection: admin traffic is rare and simple.
async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: Arc<AdminState>,
    exporter: std::rc::Rc<Exporter>,
) {
    let mut buf = Vec::with_capacity(4096);
    let mut head = RequestHead::default();
    let (status, content_type, body): Reply = loop {
        match monoio::time::timeout(READ_TIMEOUT, read_into(&mut stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        match parse_request(&buf, &LIMITS, &mut head) {
            Ok(Parse::Complete) => {
                let view = RequestView {
                    head: &head,
                    buf: &buf,
                };
                let reply = route(&view, &state, &exporter).await;
                audit(&state.logs, peer, &view, reply.0);
                break reply;
            }
            Ok(Parse::Partial) => {}
            Err(_) => break (400, JSON, r#"{"error":"bad request","status":400}"#.into()),
        }
    };
    let mut out = Vec::with_capacity(256 + body.len());
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    push_u64(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    if head.method != Method::Head {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = write_all(&mut stream, &mut out).await;
    let _ = stream.shutdown().await;
}

/// Audit line for an admin call (probes and scrapes excepted).
fn audit(logs: &Logs, peer: SocketAddr, req: &RequestView<'_>, status: u16) {
    if matches!(req.path(), b"/healthz" | b"/readyz" | b"/metrics") {
        return;
    }
    logs.audit("admin_call", |l| {
        field_str(l, "peer", peer.to_string().as_bytes());
        field_str(l, "method", req.method_bytes());
        field_str(l, "path", req.path());
        field_u64(l, "status", u64::from(status));
    });
}

async fn route(req: &RequestView<'_>, state: &AdminState, exporter: &Exporter) -> Reply {
    if req.head.method == Method::Post && req.path() == b"/reload" {
        // The same path as SIGHUP: the control thread reloads the config
        // (certificates included) and logs and audits the result.
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGHUP);
        return (202, JSON, r#"{"status":"reloading"}"#.into());
    }
    if !matches!(req.head.method, Method::Get | Method::Head) {
        return (
            405,
            JSON,
            r#"{"error":"method not allowed","status":405}"#.into(),
        );
    }
    match req.path() {
        b"/healthz" => (200, JSON, r#"{"status":"ok"}"#.into()),
        b"/readyz" if state.ready.load(Ordering::Acquire) => {
            (200, JSON, r#"{"status":"ready"}"#.into())
        }
        b"/readyz" => (503, JSON, r#"{"status":"not ready"}"#.into()),
        b"/metrics" => {
            // Read before collecting: a message the sync thread sent to the
            // workers before moving a figure is then answered for too.
            let store = state.store.snapshot();
            let reports = collect(state).await;
            let process = ProcessFigures {
                reloads_ok: state.reloads_ok.load(Ordering::Relaxed),
                reloads_refused: state.reloads_refused.load(Ordering::Relaxed),
                logs: state.logs.figures(),
                store,
                jwks: figures(&state.jwks),
                introspections: figures(&state.introspections),
                certificates: state
                    .certificates
                    .lock()
                    .map(|c| c.clone())
                    .unwrap_or_default(),
            };
            (200, PROMETHEUS, exporter.render(&reports, &process).into())
        }
        b"/stats/latency" => {
            let reports = collect(state).await;
            latency_report(&reports, req.query())
        }
        b"/stats/allocations" => {
            let counts: Vec<String> = state
                .allocations
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed).to_string())
                .collect();
            (
                200,
                JSON,
                format!(r#"{{"workers":[{}]}}"#, counts.join(",")).into(),
            )
        }
        _ => (404, JSON, r#"{"error":"not found","status":404}"#.into()),
    }
}

/// Asks every worker for its report and waits (bounded) for the answers.
/// A per-name figures table, copied out from under its lock.
fn figures(table: &crate::auth::NamedFigures) -> Vec<(String, (u64, u64, u64))> {
    let m = table.lock().unwrap_or_else(|p| p.into_inner());
    m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn collect(state: &AdminState) -> Vec<WorkerReport> {
    let Some(workers) = state.workers.get() else {
        return Vec::new();
    };
    let (tx, rx) = async_channel::bounded(workers.len().max(1));
    let mut asked = 0;
    for w in workers {
        if w.try_send(Control::Collect(tx.clone())).is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    let mut reports = Vec::with_capacity(asked);
    while reports.len() < asked {
        let wait = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, rx.recv()).await {
            Ok(Ok(r)) => reports.push(r),
            _ => break,
        }
    }
    reports.sort_by_key(|r| r.worker);
    reports
}

/// `/stats/latency`: JSON summary, or `.hgrm` with `format=hgrm`.
fn latency_report(reports: &[WorkerReport], query: &[u8]) -> Reply {
    let routes = merge_routes(reports);
    let param = |name: &str| query_param(query, name);
    if param("format").as_deref() == Some("hgrm") {
        let upstream = param("kind").as_deref() == Some("upstream");
        let wanted = param("route");
        let mut merged = None;
        for (name, r) in &routes {
            if wanted.as_deref().is_some_and(|w| w != &**name) {
                continue;
            }
            let h = if upstream { &r.upstream } else { &r.duration };
            latency::merge(&mut merged, h.as_ref());
        }
        return match merged {
            Some(h) => (200, TEXT, latency::hgrm(&h).into()),
            None => (
                404,
                JSON,
                r#"{"error":"no recordings for this route","status":404}"#.into(),
            ),
        };
    }
    let mut out = String::from(r#"{"unit":"ms","routes":["#);
    for (i, (name, r)) in routes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"route":""#);
        json_escape(&mut out, name);
        out.push_str(r#"","request":"#);
        latency::summary_json(&mut out, r.duration.as_ref());
        out.push_str(r#","upstream":"#);
        latency::summary_json(&mut out, r.upstream.as_ref());
        out.push('}');
    }
    out.push_str("]}");
    (200, JSON, out.into())
}

/// The percent-decoded value of `name` in a `?a=b&c=d` query.
fn query_param(query: &[u8], name: &str) -> Option<String> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k == name.as_bytes()).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    decode_query_value(v, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// JSON string content for a UTF-8 string.
fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let q = b"?format=hgrm&route=api%20v1&kind";
        assert_eq!(query_param(q, "format").as_deref(), Some("hgrm"));
        assert_eq!(query_param(q, "route").as_deref(), Some("api v1"));
        assert_eq!(query_param(q, "kind").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(percent_decode(b"100%"), "100%");
        assert_eq!(percent_decode(b"%4"), "%4");
    }
}

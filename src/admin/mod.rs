//! The admin listener: a separate address (loopback by default) for
//! operators and orchestrators, served by its own thread so that nothing it
//! does competes with the workers.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once every worker accepts and the config is loaded,
//!   503 before that and while draining.
//! - `GET /stats/allocations`: heap allocations made by each worker since
//!   start, `{"workers":[n0,n1,...]}`; flat under steady traffic.
//!
//! # Adding an endpoint
//! Add a branch to [`route`], a test in tests/admin.rs, and a line in
//! docs/configuration.md under `[admin]`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRent;
use monoio::net::{TcpListener, TcpStream};

use crate::http::head::{parse_request, HeadLimits, Method, Parse, RequestHead, RequestView};
use crate::http::io::{read_into, write_all};
use crate::http::response::{push_u64, status_line};
use crate::sys::AllocCounter;

/// What the admin endpoints report.
pub struct AdminState {
    pub ready: AtomicBool,
    /// Per-worker allocation counters (written by their workers only).
    allocations: &'static [AllocCounter],
}

impl AdminState {
    pub fn new(allocations: &'static [AllocCounter]) -> Self {
        Self {
            ready: AtomicBool::new(false),
            allocations,
        }
    }
}

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 4096,
    max_header_bytes: 16 * 1024,
    max_headers: 64,
};
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(handle(stream, state.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One request per connection: admin traffic is rare and simple.
async fn handle(mut stream: TcpStream, state: Arc<AdminState>) {
    let mut buf = Vec::with_capacity(4096);
    let mut head = RequestHead::default();
    let (status, body): (u16, std::borrow::Cow<'static, str>) = loop {
        match monoio::time::timeout(READ_TIMEOUT, read_into(&mut stream, &mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        match parse_request(&buf, &LIMITS, &mut head) {
            Ok(Parse::Complete) => {
                break route(
                    &RequestView {
                        head: &head,
                        buf: &buf,
                    },
                    &state,
                )
            }
            Ok(Parse::Partial) => {}
            Err(_) => break (400, r#"{"error":"bad request","status":400}"#.into()),
        }
    };
    let mut out = Vec::with_capacity(256);
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    push_u64(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    if head.method != Method::Head {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = write_all(&mut stream, &mut out).await;
    let _ = stream.shutdown().await;
}

fn route(req: &RequestView<'_>, state: &AdminState) -> (u16, std::borrow::Cow<'static, str>) {
    if !matches!(req.head.method, Method::Get | Method::Head) {
        return (405, r#"{"error":"method not allowed","status":405}"#.into());
    }
    match req.path() {
        b"/healthz" => (200, r#"{"status":"ok"}"#.into()),
        b"/readyz" if state.ready.load(Ordering::Acquire) => (200, r#"{"status":"ready"}"#.into()),
        b"/readyz" => (503, r#"{"status":"not ready"}"#.into()),
        b"/stats/allocations" => {
            let counts: Vec<String> = state
                .allocations
                .iter()
                .map(|c| c.0.load(Ordering::Relaxed).to_string())
                .collect();
            (
                200,
                format!(r#"{{"workers":[{}]}}"#, counts.join(",")).into(),
            )
        }
        _ => (404, r#"{"error":"not found","status":404}"#.into()),
    }
}

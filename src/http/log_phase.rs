//! The log phase: what stages report about a request ([`Record`]) and what
//! happens once it has been answered, errors included ([`finish`]): route
//! counters, latency histogram, access-log line. Also the audit events and
//! trace context the stages write into it.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::time::{loop_now, Instant};

use super::conn::Downstream;
use super::head::{Method, RequestView};
use super::io::Stream;
use super::response::RequestId;
use crate::observability::access_log::{audit_start, field_str, write_access, AccessRecord};
use crate::observability::metrics::{Observation, RouteStats};
use crate::observability::trace_context::{self, TraceMode, TRACEPARENT_LEN};
use crate::routing::{Action, Route};
use crate::worker::{Snapshot, WorkerCtx};

/// What stages report about the request in flight; reset per request.
#[derive(Default)]
pub struct Record {
    /// When the first byte of the head was seen.
    pub started: Option<Instant>,
    /// The client address (the peer, or from trusted proxies' X-Forwarded-For).
    pub client: Option<std::net::IpAddr>,
    /// The status sent (0 until a response head is written).
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub endpoint: Option<SocketAddr>,
    /// Upstream exchange: pooled connection taken (or new one connected)
    /// to response complete.
    pub upstream: Option<Duration>,
    /// `traceparent` generated for this request (`trace_context = "start"`).
    pub traceparent: Option<[u8; TRACEPARENT_LEN]>,
    /// Method, path and query (and the trace id) copied for the access log
    /// while the head is still in the read buffer: body bytes may overwrite
    /// it before the request ends. Capacity is kept across requests.
    pub target: Vec<u8>,
    method_len: usize,
    path_len: usize,
    query_len: usize,
    /// Whether this request gets an access-log line.
    logged: bool,
}

impl Record {
    pub fn reset(&mut self) {
        self.status = 0;
        self.client = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.endpoint = None;
        self.upstream = None;
        self.traceparent = None;
        self.logged = false;
        self.target.clear();
        self.method_len = 0;
        self.path_len = 0;
        self.query_len = 0;
    }

    /// Copies what the access log needs from the head.
    fn capture(&mut self, view: &RequestView<'_>, path: &[u8], trace_id: &[u8]) {
        self.target.clear();
        self.target.extend_from_slice(view.method_bytes());
        self.method_len = self.target.len();
        self.target.extend_from_slice(path);
        self.path_len = self.target.len() - self.method_len;
        self.target.extend_from_slice(view.query());
        self.query_len = self.target.len() - self.method_len - self.path_len;
        self.target.extend_from_slice(trace_id);
        self.logged = true;
    }

    fn parts(&self) -> (&[u8], &[u8], &[u8], &[u8]) {
        let (method, rest) = self.target.split_at(self.method_len);
        let (path, rest) = rest.split_at(self.path_len);
        let (query, trace) = rest.split_at(self.query_len);
        (method, path, query, trace)
    }
}

/// Counts an IP-filter denial and writes its audit event.
pub fn deny(
    ctx: &WorkerCtx,
    stats: &RouteStats,
    route: Option<&Route>,
    client: std::net::IpAddr,
    path: &[u8],
    id: &RequestId,
) {
    stats.denied.set(stats.denied.get() + 1);
    audit(ctx, "ip_denied", |l| {
        field_str(l, "client_ip", client.to_string().as_bytes());
        field_str(
            l,
            "filter",
            if route.is_some() { b"route" } else { b"global" },
        );
        field_str(l, "route", route.map_or(&b""[..], |r| r.name.as_bytes()));
        field_str(l, "path", path);
        field_str(l, "request_id", id.as_bytes());
    });
}

/// Writes an audit event into this worker's audit batch. Denials are the
/// exception path, so the `to_string` of an address here is acceptable.
pub fn audit(ctx: &WorkerCtx, event: &str, fields: impl FnOnce(&mut Vec<u8>)) {
    let mut sink = ctx.audit_log.borrow_mut();
    let Some(sink) = sink.as_mut() else { return };
    audit_start(sink.buf(), &ctx.clock, event);
    fields(sink.buf());
    sink.buf().push(b'}');
    sink.end_line();
}

/// `trace_context = "start"`: a request without a valid `traceparent` gets
/// one (the proxy stage sends it instead of the client's invalid one).
pub fn trace_context<S: Stream>(ctx: &WorkerCtx, snap: &Snapshot, d: &mut Downstream<'_, S>) {
    if snap.config.trace_context == TraceMode::Start {
        let view = d.view();
        let valid = view
            .header(b"traceparent")
            .and_then(trace_context::trace_id)
            .is_some();
        if !valid {
            d.x.rec.traceparent = Some(ctx.trace_ids.generate());
        }
    }
}

/// Decides whether the request gets an access-log line and, if so, copies
/// what the line needs from the head.
pub fn capture_for_log<S: Stream>(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: Option<&Route>,
) {
    if ctx.access_log.borrow().is_none() {
        return;
    }
    let sampled = match route {
        Some(r) => snap.route_stats[r.order].sample(r.access_log_ppm),
        None => true,
    };
    if !sampled {
        return;
    }
    let view = RequestView {
        head: &d.x.head,
        buf: &d.x.rbuf[d.x.start..],
    };
    let generated = d.x.rec.traceparent;
    let trace: &[u8] = match &generated {
        Some(t) => &t[3..35],
        None => view
            .header(b"traceparent")
            .and_then(trace_context::trace_id)
            .unwrap_or_default(),
    };
    // The normalised path when there is one, else the path as received.
    let path: &[u8] = if d.x.path.is_empty() {
        view.path()
    } else {
        &d.x.path
    };
    d.x.rec.capture(&view, path, trace);
}

/// The log phase: counters, latency histogram, access-log line.
pub fn finish<S: Stream>(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: Option<&Route>,
    method: Method,
    id: &RequestId,
) {
    let now = loop_now();
    let total =
        d.x.rec
            .started
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
    let stats: &RouteStats = match route {
        Some(r) => &snap.route_stats[r.order],
        None => &ctx.unmatched,
    };
    let rec = &d.x.rec;
    stats.record(&Observation {
        method,
        status: rec.status,
        bytes_in: rec.bytes_in,
        bytes_out: rec.bytes_out,
        total,
        upstream: rec.upstream,
    });
    ctx.stats.requests.set(ctx.stats.requests.get() + 1);

    let mut sink = ctx.access_log.borrow_mut();
    let Some(sink) = sink.as_mut() else { return };
    let sampled = rec.logged || route.is_none();
    if !sampled {
        return;
    }
    let (method, path, query, trace) = rec.parts();
    let cluster = route.and_then(|r| match &r.action {
        Action::Proxy(p) => Some(snap.config.clusters[p.cluster].name.as_str()),
        Action::Respond(_) | Action::OAuth2Token => None,
    });
    let record = AccessRecord {
        request_id: id.as_bytes(),
        client: rec.client.unwrap_or(d.conn.peer.ip()),
        method,
        path,
        query,
        route: route.map(|r| &*r.name),
        cluster,
        endpoint: rec.endpoint,
        status: rec.status,
        bytes_in: rec.bytes_in,
        bytes_out: rec.bytes_out,
        duration: total,
        upstream: rec.upstream,
        trace_id: (!trace.is_empty()).then_some(trace),
        worker: ctx.id,
    };
    write_access(
        sink.buf(),
        &ctx.clock,
        &record,
        snap.config.access_log.query,
    );
    sink.end_line();
}

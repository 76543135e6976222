//! One downstream connection, and the request pipeline it runs.
//!
//! ```text
//! accept -> read head -> route -> [ip filter, auth, rate limit, validation]
//!        -> pick upstream -> forward -> stream response -> log -> (keep-alive)
//! ```
//!
//! [`serve`] loops over requests on a keep-alive connection; [`exchange`]
//! runs one request through the stages top to bottom. A stage that answers
//! the request itself returns [`Next`] through [`respond_error`] or a direct
//! response; only [`proxy::forward`] talks to upstreams. Stages added by later
//! features slot in between routing and forwarding as their own modules.
//!
//! The log phase (`log_phase::finish`) runs last for every request that got an
//! answer, errors included: it adds the request to its route's counters and
//! latency histogram and, when enabled and sampled, writes the access-log
//! line. Stages report what happened through [`Record`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use super::chunked::ChunkedDecoder;
use super::head::{
    parse_request, Framing, Method, Parse, RequestHead, RequestView, ResponseHead, Version,
};
use super::io::{make_room, read_into, write_all, Park, Stream};
use super::log_phase::{audit, capture_for_log, deny, finish, trace_context, Record};
use super::proxy;
use super::response::{
    push_field, render_direct, render_empty, render_error, render_error_detail, ConnHeader,
    RequestId,
};
use crate::config::Config;
use crate::error::GatewayError;
use crate::observability::access_log::field_str;
use crate::routing::{Action, Route};
use crate::security::client_ip::client_ip;
use crate::security::path::{self, Anomalies, PathError};
use crate::worker::{Accepted, ConnBuffers, DrainGuard, Snapshot, WorkerCtx};

/// After an error response, how long unread client bytes are drained before
/// closing, so the close does not turn into a reset that destroys the
/// response in the client's receive queue (RFC 9112 9.6).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// What the connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// A downstream connection's state, reused across its requests.
/// What a connection's TLS handshake established; the default is a plain
/// TCP connection.
#[derive(Default)]
pub struct Secure {
    /// The TLS listener's settings (HSTS, forwarded certificate fields).
    pub listener: Option<std::sync::Arc<crate::tls::TlsListener>>,
    /// Client-certificate header lines for the upstream.
    pub client_cert: Vec<u8>,
    /// The verified client certificate as a principal (`mtls` routes).
    pub client_principal: Option<Rc<crate::auth::Principal>>,
}

impl Secure {
    pub fn is_tls(&self) -> bool {
        self.listener.is_some()
    }

    /// The `strict-transport-security` line (empty unless TLS with HSTS).
    pub fn hsts(&self) -> &[u8] {
        self.listener.as_ref().map_or(&[], |l| &l.hsts)
    }
}

pub struct Downstream<S> {
    pub stream: S,
    pub peer: SocketAddr,
    /// Index of the listener in the config (its settings follow reloads).
    pub listener: usize,
    pub secure: Secure,
    /// Read buffer: the request head at `start`, then body or pipelined bytes.
    pub rbuf: Vec<u8>,
    pub start: usize,
    /// Write buffer for heads and gateway-made responses.
    pub wbuf: Vec<u8>,
    /// Re-encoded body output (chunked).
    pub scratch: Vec<u8>,
    pub head: RequestHead,
    pub response: ResponseHead,
    pub decoder: ChunkedDecoder,
    /// What the current request did, for the log phase.
    pub rec: Record,
    /// The normalised request path (what routing and the upstream see).
    pub path: Vec<u8>,
    path_scratch: Vec<u8>,
    /// Header lines for every response to the current request (CORS,
    /// `Allow`); cleared per request.
    pub extra: Vec<u8>,
    /// Identity header lines for the upstream (authenticated routes);
    /// cleared per request.
    pub identity: Vec<u8>,
    /// The config's header lines for gateway-made responses and the
    /// listener's HSTS line, rendered into a buffer of the lent set, and
    /// for which snapshot and HSTS line.
    pub gateway_fields: Vec<u8>,
    fields_of: (u64, usize),
    /// A request body read whole before forwarding (JSON Schema routes);
    /// `buffered` says whether the current request's body is in it.
    pub body: Vec<u8>,
    pub buffered: bool,
    /// iovecs for writing a response head with its first body bytes.
    pub iov: crate::sys::IovecPair,
}

impl<S: Stream> Downstream<S> {
    fn new(
        stream: S,
        peer: SocketAddr,
        listener: usize,
        max_trailers: usize,
        secure: Secure,
        buffers: ConnBuffers,
    ) -> Self {
        let mut d = Self {
            stream,
            peer,
            listener,
            secure,
            rbuf: Vec::new(),
            start: 0,
            wbuf: Vec::new(),
            scratch: Vec::new(),
            head: RequestHead::default(),
            response: ResponseHead::default(),
            decoder: ChunkedDecoder::new(max_trailers),
            rec: Record::default(),
            path: Vec::new(),
            path_scratch: Vec::new(),
            extra: Vec::new(),
            identity: Vec::new(),
            gateway_fields: Vec::new(),
            fields_of: (0, 0),
            body: Vec::new(),
            buffered: false,
            iov: crate::sys::IovecPair::default(),
        };
        d.give_buffers(buffers);
        d
    }

    /// Renders the gateway-made responses' fields for this snapshot's
    /// config and this connection's HSTS line, unless the lent set holds
    /// them already (it was last used by a request of the same snapshot on
    /// the same kind of connection, as most are). The HSTS line is told
    /// apart by address: another listener's, or an older config's still
    /// held by an older connection, may differ. Listeners' TLS settings
    /// are built with a config, so a line allocated where a freed one was
    /// belongs to a later snapshot, whose serial differs.
    fn use_config(&mut self, snap: &Snapshot) {
        let hsts = self.secure.hsts();
        let of = (snap.serial, hsts.as_ptr() as usize);
        if self.fields_of != of {
            self.fields_of = of;
            self.gateway_fields.clear();
            self.gateway_fields
                .extend_from_slice(&snap.config.security.gateway_headers);
            self.gateway_fields.extend_from_slice(hsts);
        }
    }

    /// Hands the per-request buffers over (to the worker's pool), leaving
    /// empty ones.
    fn take_buffers(&mut self) -> ConnBuffers {
        use std::mem::take;
        self.start = 0;
        ConnBuffers {
            read: take(&mut self.rbuf),
            write: take(&mut self.wbuf),
            request_fields: take(&mut self.head.headers),
            response_fields: take(&mut self.response.headers),
            path: take(&mut self.path),
            path_scratch: take(&mut self.path_scratch),
            gateway_fields: take(&mut self.gateway_fields),
            fields_of: self.fields_of,
            iov: take(&mut self.iov),
        }
    }

    fn give_buffers(&mut self, buffers: ConnBuffers) {
        self.rbuf = buffers.read;
        self.wbuf = buffers.write;
        self.head.headers = buffers.request_fields;
        self.response.headers = buffers.response_fields;
        self.path = buffers.path;
        self.path_scratch = buffers.path_scratch;
        self.gateway_fields = buffers.gateway_fields;
        self.fields_of = buffers.fields_of;
        self.iov = buffers.iov;
    }

    /// The parsed head with the bytes it points into.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            head: &self.head,
            buf: &self.rbuf[self.start..],
        }
    }

    /// Marks the request head as consumed; body bytes follow at `start`.
    pub fn consume_head(&mut self) {
        self.start += self.head.len;
    }

    /// `Connection` header for a gateway-made response.
    pub fn conn_header(&self, keep: bool) -> ConnHeader {
        match (keep, self.head.version) {
            (false, _) => ConnHeader::Close,
            (true, Version::Http10) => ConnHeader::KeepAlive,
            (true, Version::Http11) => ConnHeader::None,
        }
    }
}

enum HeadOutcome {
    Ready,
    /// Closed, idle timeout or drain: nothing to answer.
    Closed,
    Error(GatewayError),
}

/// Serves one accepted connection until it closes.
///
/// The connection's state is built before the future that is its task, so
/// the future holds it once: an `async fn` would also keep the stream and
/// its TLS settings as arguments, 200 bytes more per idle connection.
pub fn serve<S: Stream + Park>(
    conn: Accepted,
    stream: S,
    secure: Secure,
) -> impl std::future::Future<Output = ()> {
    let ctx = &conn.ctx;
    let snap = ctx.snapshot();
    let mut d = Downstream::new(
        stream,
        conn.peer,
        conn.listener,
        snap.config.limits.head.max_header_bytes,
        secure,
        ctx.buffers.take(),
    );
    let deadline = conn.at + snap.config.timeouts.request_head;
    drop(snap);
    async move {
        serve_requests(&conn.ctx, &mut d, deadline, conn.proxy_protocol).await;
        conn.ctx.buffers.put(d.take_buffers());
    }
}

/// The request loop of [`serve`]. Between requests the connection waits
/// here; each request then runs in one of the worker's stage slots
/// (`worker::stage_slots`), so the task itself holds only what an idle
/// connection needs.
async fn serve_requests<S: Stream + Park>(
    ctx: &Rc<WorkerCtx>,
    d: &mut Downstream<S>,
    first_deadline: Instant,
    proxy_protocol: bool,
) {
    let drain = ctx.drain.register();
    let mut deadline = Some(first_deadline);
    if proxy_protocol {
        // Within the first head's deadline; anything but a valid header
        // closes the connection unanswered.
        let Some(until) = deadline else { return };
        if !ctx.stage_slots.run(|| read_proxy_header(d, until)).await {
            return;
        }
    }
    loop {
        // Between requests on a keep-alive connection, with nothing read
        // ahead, wait for the next bytes: a while with the read armed, then
        // without buffers (see `worker::buffers`).
        let between = deadline.is_none() && d.start >= d.rbuf.len();
        if between && ctx.park_idle && d.stream.can_park() && !wait_next(d, ctx, &drain).await {
            return;
        }
        let next = ctx
            .stage_slots
            .run(|| request(ctx, d, deadline, &drain))
            .await;
        if next == Next::Close {
            return;
        }
        deadline = None;
    }
}

/// One request on the connection: its head, its stages and its log phase.
async fn request<S: Stream + Park>(
    ctx: &WorkerCtx,
    d: &mut Downstream<S>,
    deadline: Option<Instant>,
    drain: &DrainGuard<'_>,
) -> Next {
    let waiting = ctx.snapshot();
    let outcome = read_head(d, &waiting.config, deadline, drain).await;
    drop(waiting);
    // Each request sees one snapshot from head to end of response: the
    // newest at the time its head arrived, even on an old connection.
    let snap = ctx.snapshot();
    match outcome {
        HeadOutcome::Ready => {}
        HeadOutcome::Closed => return Next::Close,
        HeadOutcome::Error(err) => {
            let id = ctx.request_ids.generate();
            d.use_config(&snap);
            render_error(
                &mut d.wbuf,
                err,
                &id,
                ConnHeader::Close,
                &[&d.gateway_fields],
            );
            d.rec.status = err.status();
            d.rec.bytes_out = d.wbuf.len() as u64;
            d.rec.bytes_in = d.rbuf.len().saturating_sub(d.start) as u64;
            let written = write_all(&mut d.stream, &mut d.wbuf).await.is_ok();
            finish(ctx, &snap, d, None, Method::Other, &id);
            if written {
                linger_close(d).await;
            }
            return Next::Close;
        }
    }
    let next = exchange(ctx, &snap, d).await;
    if next == Next::Close || ctx.drain.is_draining() {
        d.stream.finish().await;
        return Next::Close;
    }
    Next::KeepAlive
}

/// Reads the PROXY protocol header and takes its source as the peer.
/// Returns `false` when the connection must close.
async fn read_proxy_header<S: Stream>(d: &mut Downstream<S>, until: Instant) -> bool {
    match crate::security::proxy_protocol::read_header(&mut d.stream, &mut d.rbuf, until).await {
        Some((len, source)) => {
            d.start += len;
            if let Some(source) = source {
                d.peer = source;
            }
            true
        }
        None => {
            tracing::debug!(peer = %d.peer, "invalid or missing PROXY protocol header; closing");
            false
        }
    }
}

/// Reads until a complete request head is at `d.start`.
async fn read_head<S: Stream>(
    d: &mut Downstream<S>,
    cfg: &Config,
    mut deadline: Option<Instant>,
    drain: &DrainGuard<'_>,
) -> HeadOutcome {
    let limits = &cfg.limits.head;
    d.rec.reset();
    d.rec.started = None;
    loop {
        if d.start < d.rbuf.len() {
            if d.rec.started.is_none() {
                d.rec.started = Some(Instant::now());
            }
            match parse_request(&d.rbuf[d.start..], limits, &mut d.head) {
                Ok(Parse::Complete) => return HeadOutcome::Ready,
                Ok(Parse::Partial) => {}
                Err(e) => return HeadOutcome::Error(e.into()),
            }
            // The head timeout runs from its first byte on keep-alive connections.
            deadline.get_or_insert_with(|| Instant::now() + cfg.timeouts.request_head);
            // Keep a partial head at the front so it can use the whole buffer.
            if d.start > 0 {
                d.rbuf.copy_within(d.start.., 0);
                d.rbuf.truncate(d.rbuf.len() - d.start);
                d.start = 0;
            }
            if d.rbuf.len() == d.rbuf.capacity() {
                d.rbuf.reserve(
                    (limits.max_header_bytes + 1)
                        .saturating_sub(d.rbuf.len())
                        .max(1024),
                );
            }
        } else {
            make_room(&mut d.rbuf, &mut d.start);
        }
        let idle = d.rbuf.is_empty();
        let wait = match deadline {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => cfg.timeouts.keepalive_idle,
        };
        let read = monoio::time::timeout(wait, read_into(&mut d.stream, &mut d.rbuf));
        let result = if idle {
            // Only an idle connection gives way to a drain; a request that has
            // started is served.
            monoio::select! {
                r = read => Some(r),
                _ = drain.wait() => None,
            }
        } else {
            Some(read.await)
        };
        match result {
            None | Some(Ok(Ok(0)) | Ok(Err(_))) => return HeadOutcome::Closed,
            Some(Ok(Ok(_))) => {}
            Some(Err(_)) if idle => return HeadOutcome::Closed,
            Some(Err(_)) => return HeadOutcome::Error(GatewayError::RequestTimeout),
        }
    }
}

/// Waits for an idle keep-alive connection's next request (io_uring only),
/// its buffers back in the pool meanwhile (see `worker::buffers`).
///
/// For `keepalive_park_after` a read stays armed with a 1 KiB hold buffer:
/// a request that comes in that time arrives with the read and costs no
/// other operation. Then the read is cancelled, which returns the hold
/// buffer (with any bytes that beat the cancellation), and the connection
/// parks, waiting for readability without any buffer for the rest of
/// `keepalive_idle`. Parking at once would cost every request a readiness
/// poll before its read; keeping the read buffer lent (16 KiB) would cost
/// that much memory per idle connection.
///
/// Returns `false` when the connection is to close: idle timeout, end of
/// stream, error or drain. The buffers are back in place either way, with
/// the bytes that came.
async fn wait_next<S: Stream + Park>(
    d: &mut Downstream<S>,
    ctx: &WorkerCtx,
    drain: &DrainGuard<'_>,
) -> bool {
    let (idle, armed) = {
        let t = &ctx.snapshot().config.timeouts;
        (
            t.keepalive_idle,
            t.keepalive_park_after.min(t.keepalive_idle),
        )
    };
    let pool = &ctx.buffers;
    pool.put(d.take_buffers());
    d.stream.release(pool);
    // At most `MAX_HELD` connections of a worker hold a read; past that
    // one parks at once, for all of `idle`.
    let holding = if armed.is_zero() { None } else { pool.hold() };
    let armed = if holding.is_some() {
        armed
    } else {
        Duration::ZERO
    };
    let quiet = holding.is_none() || {
        // In a stage slot: its read's future is larger than the rest of
        // the connection's waiting state.
        let stream = &mut d.stream;
        match ctx
            .stage_slots
            .run(|| hold(stream, ctx, armed, drain))
            .await
        {
            Held::Bytes(bytes) => {
                take_buffers_back(d, pool);
                d.stream.received(&bytes, &mut d.rbuf);
                pool.put_hold(bytes);
                return true;
            }
            Held::Quiet => true,
            Held::Close => false,
        }
    };
    drop(holding);
    let woke = quiet
        && armed < idle
        && !ctx.drain.is_draining()
        && park(&d.stream, ctx, idle - armed, drain).await;
    take_buffers_back(d, pool);
    woke
}

/// Undoes [`wait_next`]'s lending of the buffers.
fn take_buffers_back<S: Stream + Park>(d: &mut Downstream<S>, pool: &crate::worker::BufferPool) {
    d.stream.restore(pool);
    d.give_buffers(pool.take());
}

/// How a held read ended.
enum Held {
    /// The next bytes came (in this hold buffer).
    Bytes(Vec<u8>),
    /// Nothing came within the wait.
    Quiet,
    /// End of stream, an error or a drain.
    Close,
}

/// Reads into a hold buffer for at most `wait`, or until a drain.
async fn hold<S: Park>(
    stream: &mut S,
    ctx: &WorkerCtx,
    wait: Duration,
    drain: &DrainGuard<'_>,
) -> Held {
    let pool = &ctx.buffers;
    let mut buf = pool.take_hold();
    let mut canceller = pool.take_canceller();
    let timer = ctx.idle_timers.start(wait);
    let result = {
        let mut read = std::pin::pin!(stream.read_held(&mut buf, canceller.handle()));
        let came = monoio::select! {
            r = &mut read => Some(r),
            _ = timer.expired() => None,
            _ = drain.wait() => None,
        };
        match came {
            Some(r) => r,
            None => {
                // A cancelled canceller stays cancelled; its successor
                // goes back to the pool.
                canceller = canceller.cancel();
                read.await
            }
        }
    };
    drop(timer);
    pool.put_canceller(canceller);
    let held = match result {
        Ok(n) if n > 0 => return Held::Bytes(buf),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Held::Quiet,
        _ => Held::Close,
    };
    pool.put_hold(buf);
    held
}

/// Waits, without buffers, until an idle keep-alive connection has bytes
/// to read. Returns `false` on idle timeout (`worker::idle_timers`), error
/// or drain.
async fn park<S: Park>(
    stream: &S,
    ctx: &WorkerCtx,
    wait: Duration,
    drain: &DrainGuard<'_>,
) -> bool {
    let parked = ctx.buffers.park();
    let idle = ctx.idle_timers.start(wait);
    let woke = monoio::select! {
        r = stream.readable() => r.is_ok(),
        _ = idle.expired() => false,
        _ = drain.wait() => false,
    };
    drop(idle);
    drop(parked);
    woke
}

/// Runs one request through the pipeline, then the log phase.
async fn exchange<S: Stream>(ctx: &WorkerCtx, snap: &Snapshot, d: &mut Downstream<S>) -> Next {
    let cfg = &snap.config;
    d.rec.bytes_in = d.head.len as u64;
    d.use_config(snap);
    d.extra.clear();
    d.identity.clear();
    d.buffered = false;
    let view = RequestView {
        head: &d.head,
        buf: &d.rbuf[d.start..],
    };
    let id = match view.head.request_id {
        Some(s) => RequestId::from_client(s.get(view.buf)),
        None => ctx.request_ids.generate(),
    };
    let method = d.head.method;
    // normalise the path, then find the client, then route
    let normalized = path::normalize(view.path(), &mut d.path, &mut d.path_scratch);
    if normalized.is_err() {
        d.path.clear();
    }
    let xff = view
        .head
        .headers
        .iter()
        .filter(|h| {
            h.name
                .get(view.buf)
                .eq_ignore_ascii_case(b"x-forwarded-for")
        })
        .map(|h| h.value.get(view.buf));
    d.rec.client = Some(client_ip(d.peer.ip(), xff, &cfg.security.trusted_proxies));
    let redirecting = cfg
        .listeners
        .get(d.listener)
        .is_some_and(|l| l.redirect.is_some());
    let route = match normalized {
        Ok(_) if !redirecting => cfg.router.find_for(&view, &d.path, routing_method(&view)),
        _ => None,
    };
    let next = stages(ctx, snap, d, route, normalized, &id).await;
    finish(ctx, snap, d, route, method, &id);
    next
}

/// Seconds since the Unix epoch (the clock token lifetimes are checked
/// against; a vDSO read, no syscall).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The method a request is routed by: a CORS preflight is routed as the
/// request it asks about.
fn routing_method(view: &RequestView<'_>) -> Method {
    if view.head.method == Method::Options && view.header(b"origin").is_some() {
        if let Some(m) = view.header(b"access-control-request-method") {
            return Method::parse(m.trim_ascii());
        }
    }
    view.head.method
}

/// The stages between routing and the log phase.
async fn stages<S: Stream>(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    d: &mut Downstream<S>,
    route: Option<&Route>,
    normalized: Result<Anomalies, PathError>,
    id: &RequestId,
) -> Next {
    let cfg = &snap.config;
    let has_body = d.head.framing != Framing::Empty;
    // A body the gateway does not read leaves the connection unusable.
    let keep = d.head.keep_alive && !has_body;
    let client = d.rec.client.unwrap_or(d.peer.ip());

    // path normalisation and the global IP filter come before routing
    let Ok(anomalies) = normalized else {
        capture_for_log(ctx, snap, d, None);
        return respond_error(d, GatewayError::InvalidPath, id, keep).await;
    };
    if !cfg.security.ip_filter.permits(client) {
        capture_for_log(ctx, snap, d, None);
        deny(ctx, &ctx.unmatched, None, client, &d.path, id);
        return respond_error(d, GatewayError::Forbidden, id, keep).await;
    }

    // a redirecting listener answers every request itself
    if let Some(redirect) = cfg
        .listeners
        .get(d.listener)
        .and_then(|l| l.redirect.as_deref())
    {
        capture_for_log(ctx, snap, d, None);
        return redirect_https(d, redirect, id, keep).await;
    }

    // route
    let Some(route) = route else {
        capture_for_log(ctx, snap, d, None);
        return respond_error(d, GatewayError::NotFound, id, keep).await;
    };
    trace_context(ctx, snap, d);
    capture_for_log(ctx, snap, d, Some(route));
    let policy = &route.policy;
    if !anomalies.allowed_by(policy.allow_path) {
        return respond_error(d, GatewayError::InvalidPath, id, keep).await;
    }
    if !policy.ip_filter.permits(client) {
        deny(
            ctx,
            &snap.route_stats[route.order],
            Some(route),
            client,
            &d.path,
            id,
        );
        return respond_error(d, GatewayError::Forbidden, id, keep).await;
    }

    // CORS: preflights are answered here; other requests from an allowed
    // origin get the CORS fields on whatever response they receive
    if let Some(cors) = &policy.cors {
        let view = RequestView {
            head: &d.head,
            buf: &d.rbuf[d.start..],
        };
        if let Some(origin) = view.header(b"origin") {
            let requested = view.header(b"access-control-request-method");
            match (view.head.method, requested) {
                (Method::Options, Some(m)) => {
                    let headers = view.header(b"access-control-request-headers");
                    if !cors.preflight(origin, m.trim_ascii(), headers, &mut d.extra) {
                        audit(ctx, "cors_refused", |l| {
                            field_str(l, "route", route.name.as_bytes());
                            field_str(l, "origin", origin);
                            field_str(l, "client_ip", client.to_string().as_bytes());
                            field_str(l, "request_id", id.as_bytes());
                        });
                        return respond_error(d, GatewayError::CorsRefused, id, keep).await;
                    }
                    let conn = d.conn_header(keep);
                    d.consume_head();
                    render_empty(&mut d.wbuf, 204, id, conn, &[&d.gateway_fields, &d.extra]);
                    d.rec.status = 204;
                    d.rec.bytes_out = d.wbuf.len() as u64;
                    return match write_all(&mut d.stream, &mut d.wbuf).await {
                        Ok(()) if keep => Next::KeepAlive,
                        _ => Next::Close,
                    };
                }
                _ => cors.response_fields(origin, &mut d.extra),
            }
        }
    }

    // authentication and authorization
    let identity = match &route.auth {
        None => None,
        Some(ra) => match authenticate(ctx, snap, d, route, ra, client, id, keep).await {
            Ok(who) => Some(who),
            Err(next) => return next,
        },
    };

    // rate limits
    if !route.rate_limits.is_empty() {
        use crate::ratelimit::{render_fields, Verdict};
        if ctx.limiter.refusing() {
            return respond_error(d, GatewayError::RateLimitUnavailable, id, keep).await;
        }
        let view = RequestView {
            head: &d.head,
            buf: &d.rbuf[d.start..],
        };
        let verdict = ctx.limiter.check(
            &route.rate_limits,
            |p| {
                let principal = identity.as_ref().map(crate::auth::Identity::subject);
                p.key_of(&view, client, &route.name, principal)
            },
            ctx.now_ns(),
        );
        match verdict {
            Verdict::Allowed(Some((i, dec))) if cfg.rate_limit.headers => {
                render_fields(&mut d.extra, &route.rate_limits[i], &dec);
            }
            Verdict::Allowed(_) => {}
            Verdict::Limited(i, dec) => {
                let p = &route.rate_limits[i];
                render_fields(&mut d.extra, p, &dec);
                let stats = &snap.route_stats[route.order];
                stats.limited.set(stats.limited.get() + 1);
                audit(ctx, "rate_limited", |l| {
                    field_str(l, "route", route.name.as_bytes());
                    field_str(l, "policy", p.name.as_bytes());
                    field_str(l, "client_ip", client.to_string().as_bytes());
                    field_str(l, "request_id", id.as_bytes());
                });
                return respond_error(d, GatewayError::TooManyRequests, id, keep).await;
            }
        }
    }

    // concurrency cap: the permit is held until the response is written
    let _permit = match (route.concurrency, &snap.route_gates[route.order]) {
        (Some(cap), Some(gate)) => match gate.enter(cap).await {
            Ok(permit) => Some(permit),
            Err(_) => return respond_error(d, GatewayError::Overloaded, id, keep).await,
        },
        _ => None,
    };

    // request validation
    if let Some(rules) = &policy.validate {
        let view = RequestView {
            head: &d.head,
            buf: &d.rbuf[d.start..],
        };
        if let Err(e) = rules.check(&view, &mut d.scratch) {
            if e == GatewayError::MethodNotAllowed {
                d.extra.extend_from_slice(b"allow: ");
                d.extra.extend_from_slice(rules.allow());
                d.extra.extend_from_slice(b"\r\n");
            }
            return respond_error(d, e, id, keep).await;
        }
    }
    // body limit, decided before reading any of it when the length is known
    if let Framing::Length(n) = d.head.framing {
        if n > route.max_body_bytes {
            return respond_error(d, GatewayError::PayloadTooLarge, id, false).await;
        }
    }
    // JSON Schema routes read the body whole and check it first
    if let Some(rules) = policy.validate.as_ref().filter(|r| r.json_schema.is_some()) {
        if let Some(next) = buffer_and_check_json(snap, d, route, rules, id).await {
            return next;
        }
    }
    match &route.action {
        Action::Respond(direct) => send_direct(d, direct, id, keep).await,
        Action::Proxy(action) => proxy::forward(ctx, snap, d, route, action, id).await,
        Action::OAuth2Token => token_endpoint(snap, d, route, id, keep).await,
    }
}

/// Authentication and authorization: the caller's identity (its header
/// lines for the upstream rendered into `d.identity`), or `Err` when the
/// request was answered here: 401/403, or 503 when a token introspection
/// endpoint gave no answer. A token the worker has no answer for waits on
/// the introspection pool; each endpoint is asked at most once per request.
#[allow(clippy::too_many_arguments)]
async fn authenticate<'c, S: Stream>(
    ctx: &WorkerCtx,
    snap: &'c Snapshot,
    d: &mut Downstream<S>,
    route: &Route,
    ra: &crate::auth::RouteAuth,
    client: std::net::IpAddr,
    id: &RequestId,
    keep: bool,
) -> Result<crate::auth::Identity<'c>, Next> {
    use crate::auth::{check, Checked, Denied};
    let cfg = &snap.config;
    let mut fresh = Vec::new();
    let outcome = loop {
        let view = RequestView {
            head: &d.head,
            buf: &d.rbuf[d.start..],
        };
        let now = unix_now();
        let cert = d.secure.client_principal.as_ref();
        match check(ra, &cfg.auth, &view, now, &ctx.auth, &fresh, cert) {
            Checked::Done(outcome) => break outcome,
            Checked::Introspect(e, token) => {
                let endpoint = &cfg.auth.introspection[e];
                match ctx.auth.introspect(endpoint, &token, now).await {
                    Ok(answer) => fresh.push((e, answer)),
                    Err(reason) => {
                        audit(ctx, "auth_unavailable", |l| {
                            field_str(l, "route", route.name.as_bytes());
                            field_str(l, "endpoint", endpoint.name.as_bytes());
                            field_str(l, "reason", reason.as_bytes());
                            field_str(l, "request_id", id.as_bytes());
                        });
                        let e = GatewayError::AuthUnavailable;
                        return Err(respond_error(d, e, id, keep).await);
                    }
                }
            }
        }
    };
    match outcome {
        Ok(who) => {
            ra.render_forward(&who, &mut d.identity);
            Ok(who)
        }
        Err(denied) => {
            let stats = &snap.route_stats[route.order];
            let (counter, error) = match denied {
                Denied::Forbidden(_) => (&stats.forbidden, GatewayError::Forbidden),
                _ => (&stats.unauthenticated, GatewayError::Unauthorized),
            };
            counter.set(counter.get() + 1);
            denied.challenge(ra, &mut d.extra);
            audit(ctx, "auth_denied", |l| {
                field_str(l, "route", route.name.as_bytes());
                field_str(l, "reason", denied.reason().as_bytes());
                field_str(l, "client_ip", client.to_string().as_bytes());
                field_str(l, "request_id", id.as_bytes());
            });
            Err(respond_error(d, error, id, keep).await)
        }
    }
}

/// Writes a response the gateway makes itself (a route's `respond`).
async fn send_direct<S: Stream>(
    d: &mut Downstream<S>,
    direct: &crate::routing::DirectResponse,
    id: &RequestId,
    keep: bool,
) -> Next {
    let head_only = d.head.method == Method::Head;
    let conn = d.conn_header(keep);
    d.consume_head();
    render_direct(
        &mut d.wbuf,
        direct,
        id,
        conn,
        head_only,
        &[&d.gateway_fields, &d.extra],
    );
    d.rec.status = direct.status;
    d.rec.bytes_out = d.wbuf.len() as u64;
    match write_all(&mut d.stream, &mut d.wbuf).await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Answers with a redirect to the same host, path and query over https.
async fn redirect_https<S: Stream>(
    d: &mut Downstream<S>,
    redirect: &crate::routing::redirect::HttpsRedirect,
    id: &RequestId,
    keep: bool,
) -> Next {
    let view = RequestView {
        head: &d.head,
        buf: &d.rbuf[d.start..],
    };
    if let Err(e) = redirect.location(&view, &mut d.scratch) {
        return respond_error(d, e, id, keep).await;
    }
    push_field(&mut d.extra, b"location", &d.scratch);
    d.extra.extend_from_slice(b"content-length: 0\r\n");
    let conn = d.conn_header(keep);
    d.consume_head();
    render_empty(
        &mut d.wbuf,
        redirect.status,
        id,
        conn,
        &[&d.gateway_fields, &d.extra],
    );
    d.rec.status = redirect.status;
    d.rec.bytes_out = d.wbuf.len() as u64;
    match write_all(&mut d.stream, &mut d.wbuf).await {
        Ok(()) if keep => Next::KeepAlive,
        Ok(()) => {
            linger_close(d).await;
            Next::Close
        }
        Err(_) => Next::Close,
    }
}

/// The OAuth2 token endpoint: POST with a form body, answered here.
async fn token_endpoint<S: Stream>(
    snap: &Snapshot,
    d: &mut Downstream<S>,
    route: &Route,
    id: &RequestId,
    keep: bool,
) -> Next {
    let Some(issuer) = snap.config.auth.token.as_ref() else {
        return respond_error(d, GatewayError::Unavailable, id, keep).await;
    };
    if d.head.method != Method::Post {
        d.extra.extend_from_slice(b"allow: POST\r\n");
        return respond_error(d, GatewayError::MethodNotAllowed, id, keep).await;
    }
    if !d.buffered {
        if let Some(next) = buffer_body(snap, d, route, id).await {
            return next;
        }
    }
    let view = RequestView {
        head: &d.head,
        buf: &d.rbuf[d.start..],
    };
    let answer = issuer.handle(&view, &d.body, unix_now());
    let direct = crate::routing::DirectResponse {
        status: answer.status,
        headers: answer.headers.into(),
        body: answer.body.into_bytes().into(),
    };
    send_direct(d, &direct, id, d.head.keep_alive).await
}

/// Reads the request body into `d.body` and checks it against the route's
/// schema. `Some(next)` when the request was answered here.
async fn buffer_and_check_json<S: Stream>(
    snap: &Snapshot,
    d: &mut Downstream<S>,
    route: &Route,
    rules: &crate::security::validate::Validate,
    id: &RequestId,
) -> Option<Next> {
    let bodyful = matches!(d.head.method, Method::Post | Method::Put | Method::Patch);
    if d.head.framing == Framing::Empty && !rules.body_required.unwrap_or(bodyful) {
        return None;
    }
    if let Some(next) = buffer_body(snap, d, route, id).await {
        return Some(next);
    }
    let keep = d.head.keep_alive;
    if let Err(problem) = rules.check_json(&d.body) {
        let mut detail = Vec::new();
        problem.render(&mut detail);
        return Some(respond_error_detail(d, GatewayError::InvalidBody, id, keep, &detail).await);
    }
    None
}

/// Reads the request body whole into `d.body` (up to the route's body
/// limit); it is then forwarded, if at all, as a Content-Length body from
/// there. `Some(next)` when the request was answered here. The head stays
/// where it is in the read buffer: body bytes are moved to a scratch buffer
/// and bytes after the body (pipelined requests) are put back behind it.
async fn buffer_body<S: Stream>(
    snap: &Snapshot,
    d: &mut Downstream<S>,
    route: &Route,
    id: &RequestId,
) -> Option<Next> {
    use super::body::{collect, BodyError};
    use super::io::{Inbound, ReadError};
    if d.head.expect_continue {
        d.scratch.clear();
        d.scratch
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if write_all(&mut d.stream, &mut d.scratch).await.is_err() {
            return Some(Next::Close);
        }
        d.head.expect_continue = false;
    }
    let body_start = d.start + d.head.len;
    let mut raw = std::mem::take(&mut d.scratch);
    raw.clear();
    raw.extend_from_slice(&d.rbuf[body_start..]);
    d.rbuf.truncate(body_start);
    let mut raw_start = 0;
    let result = {
        let mut src = Inbound {
            stream: &mut d.stream,
            buf: &mut raw,
            start: &mut raw_start,
        };
        collect(
            &mut src,
            d.head.framing,
            &mut d.body,
            &mut d.decoder,
            snap.config.timeouts.request_body_idle,
            route.max_body_bytes,
        )
        .await
    };
    // Pipelined bytes after the body go back to the read buffer.
    d.rbuf.extend_from_slice(&raw[raw_start..]);
    d.scratch = raw;
    let err = match result {
        Ok(n) => {
            d.rec.bytes_in += n;
            None
        }
        Err(BodyError::TooLarge) => Some(GatewayError::PayloadTooLarge),
        Err(BodyError::Source(ReadError::TimedOut)) => Some(GatewayError::RequestTimeout),
        Err(BodyError::Invalid(_)) => Some(GatewayError::BadRequest),
        Err(_) => return Some(Next::Close),
    };
    if let Some(err) = err {
        // The rest of the body is unread: close.
        d.head.framing = Framing::Empty;
        return Some(respond_error(d, err, id, false).await);
    }
    // Forwarded as a Content-Length body from the buffer.
    d.head.framing = Framing::Length(d.body.len() as u64);
    d.buffered = true;
    None
}

/// Answers with a gateway error. `keep` says whether the connection may
/// continue (only when the request had no body left unread).
pub async fn respond_error<S: Stream>(
    d: &mut Downstream<S>,
    err: GatewayError,
    id: &RequestId,
    keep: bool,
) -> Next {
    respond_error_detail(d, err, id, keep, b"").await
}

/// [`respond_error`] with extra JSON fields in the body.
async fn respond_error_detail<S: Stream>(
    d: &mut Downstream<S>,
    err: GatewayError,
    id: &RequestId,
    keep: bool,
    detail: &[u8],
) -> Next {
    let conn = d.conn_header(keep);
    d.consume_head();
    render_error_detail(
        &mut d.wbuf,
        err,
        id,
        conn,
        &[&d.gateway_fields, &d.extra],
        detail,
    );
    d.rec.status = err.status();
    d.rec.bytes_out += d.wbuf.len() as u64;
    if write_all(&mut d.stream, &mut d.wbuf).await.is_err() {
        return Next::Close;
    }
    if keep {
        Next::KeepAlive
    } else {
        linger_close(d).await;
        Next::Close
    }
}

/// Half-closes, then reads and discards what the client still sends (bounded
/// in time and bytes) so that closing does not reset the connection before
/// the client has read our response.
async fn linger_close<S: Stream>(d: &mut Downstream<S>) {
    if d.stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        d.rbuf.clear();
        d.start = 0;
        let wait = until.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, read_into(&mut d.stream, &mut d.rbuf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// What an idle keep-alive connection costs is mostly its task, that
    /// is this future: it must not grow to hold a request's stages (they
    /// run in stage slots) or the connection's arguments twice.
    #[test]
    fn a_connection_future_stays_small() {
        fn size<F, Fut>(_: &F) -> usize
        where
            F: Fn(crate::worker::Accepted, monoio::net::TcpStream, super::Secure) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let bytes = size(&super::serve::<monoio::net::TcpStream>);
        assert!(bytes <= 1_536, "{bytes} bytes");
    }
}

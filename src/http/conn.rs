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

use monoio::time::{loop_now, Instant};

use super::chunked::ChunkedDecoder;
use super::head::{
    parse_request, Framing, Method, Parse, RequestHead, RequestView, ResponseHead, Version,
};
use super::io::{make_room, read_into, write_all, Park, SendReadError, Stream};
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
use crate::worker::buffers::{FIELDS, KEEP, PATH, READ_BUF, SEND_BUF, WRITE_BUF};
use crate::worker::{Accepted, DrainGuard, Snapshot, WorkerCtx};

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

/// A downstream connection: what it keeps for its whole life.
pub struct Connection<S> {
    pub stream: S,
    pub peer: SocketAddr,
    /// Index of the listener in the config (its settings follow reloads).
    pub listener: usize,
    pub secure: Secure,
    /// A small keep-alive response may wait to leave with the connection's
    /// next held read (see [`send_last`]): plain TCP on a worker that holds
    /// reads.
    pub send_with_hold: bool,
}

/// A request on a downstream connection: the connection, and the exchange
/// lent to it from the worker's pool for as long as it has a request in
/// progress or bytes read ahead (see `wait_next`).
pub struct Downstream<'c, S> {
    pub conn: &'c mut Connection<S>,
    pub x: Box<Exchange>,
}

/// What a connection needs only while a request is on it: its buffers and
/// the state of the request. Lent whole from the worker's pool
/// (`worker::buffers`), so an idle connection's task holds one pointer
/// instead of all of it.
pub struct Exchange {
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
    pub path_scratch: Vec<u8>,
    /// Header lines for every response to the current request (CORS,
    /// `Allow`); cleared per request.
    pub extra: Vec<u8>,
    /// Identity header lines for the upstream (authenticated routes);
    /// cleared per request.
    pub identity: Vec<u8>,
    /// The config's header lines for gateway-made responses and the
    /// listener's HSTS line as last rendered, and for which snapshot and
    /// HSTS line (kept across uses: see [`Downstream::use_config`]).
    pub gateway_fields: Vec<u8>,
    pub fields_of: (u64, usize),
    /// A request body read whole before forwarding (JSON Schema routes);
    /// `buffered` says whether the current request's body is in it.
    pub body: Vec<u8>,
    pub buffered: bool,
    /// `wbuf` holds a whole response not sent yet: it leaves with the
    /// connection's next read (see [`send_last`]).
    pub unsent: bool,
    /// iovecs for writing a response head with its first body bytes.
    pub iov: crate::sys::IovecPair,
}

impl Exchange {
    /// An empty exchange with the standard capacities.
    pub fn new() -> Self {
        let mut head = RequestHead::default();
        head.headers.reserve_exact(FIELDS);
        let mut response = ResponseHead::default();
        response.headers.reserve_exact(FIELDS);
        Self {
            rbuf: Vec::with_capacity(READ_BUF),
            start: 0,
            wbuf: Vec::with_capacity(WRITE_BUF),
            scratch: Vec::new(),
            head,
            response,
            decoder: ChunkedDecoder::new(0),
            rec: Record::default(),
            path: Vec::with_capacity(PATH),
            path_scratch: Vec::with_capacity(PATH),
            extra: Vec::new(),
            identity: Vec::new(),
            gateway_fields: Vec::new(),
            fields_of: (0, 0),
            body: Vec::new(),
            buffered: false,
            unsent: false,
            iov: crate::sys::IovecPair::default(),
        }
    }

    /// Empties it for its next connection. Returns `false` when it is not
    /// worth keeping: its read buffer grew for a large head or went with a
    /// cancelled read, or another buffer grew past what the pool keeps.
    pub fn recycle(&mut self) -> bool {
        let standard = self.rbuf.capacity() == READ_BUF
            && self.wbuf.capacity() <= 4 * WRITE_BUF
            && self.path.capacity() <= 4 * PATH
            && self.path_scratch.capacity() <= 4 * PATH;
        if !standard {
            return false;
        }
        for buf in [
            &mut self.scratch,
            &mut self.extra,
            &mut self.identity,
            &mut self.body,
            &mut self.rec.target,
        ] {
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            buf.clear();
        }
        self.decoder.trim(KEEP);
        self.rbuf.clear();
        self.start = 0;
        self.wbuf.clear();
        self.head.headers.clear();
        self.response.headers.clear();
        self.path.clear();
        self.path_scratch.clear();
        self.buffered = false;
        self.unsent = false;
        true
    }
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Stream> Downstream<'_, S> {
    /// Renders the gateway-made responses' fields for this snapshot's
    /// config and this connection's HSTS line, unless the lent exchange holds
    /// them already (it was last used by a request of the same snapshot on
    /// the same kind of connection, as most are). The HSTS line is told
    /// apart by address: another listener's, or an older config's still
    /// held by an older connection, may differ. Listeners' TLS settings
    /// are built with a config, so a line allocated where a freed one was
    /// belongs to a later snapshot, whose serial differs.
    fn use_config(&mut self, snap: &Snapshot) {
        let hsts = self.conn.secure.hsts();
        let of = (snap.serial, hsts.as_ptr() as usize);
        if self.x.fields_of != of {
            self.x.fields_of = of;
            self.x.gateway_fields.clear();
            self.x
                .gateway_fields
                .extend_from_slice(&snap.config.security.gateway_headers);
            self.x.gateway_fields.extend_from_slice(hsts);
        }
    }

    /// The parsed head with the bytes it points into.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            head: &self.x.head,
            buf: &self.x.rbuf[self.x.start..],
        }
    }

    /// Marks the request head as consumed; body bytes follow at `start`.
    pub fn consume_head(&mut self) {
        self.x.start += self.x.head.len;
    }

    /// `Connection` header for a gateway-made response.
    pub fn conn_header(&self, keep: bool) -> ConnHeader {
        match (keep, self.x.head.version) {
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
    let deadline = conn.at + conn.ctx.snapshot().config.timeouts.request_head;
    let send_with_hold = conn.ctx.park_idle && stream.sends_with_held_read();
    let mut c = Connection {
        stream,
        peer: conn.peer,
        listener: conn.listener,
        secure,
        send_with_hold,
    };
    async move { serve_requests(&conn.ctx, &mut c, deadline, conn.proxy_protocol).await }
}

/// The request loop of [`serve`]. Between requests the connection waits
/// here; each request then runs in one of the worker's stage slots
/// (`worker::stage_slots`), so the task itself holds only what an idle
/// connection needs.
async fn serve_requests<S: Stream + Park>(
    ctx: &Rc<WorkerCtx>,
    conn: &mut Connection<S>,
    first_deadline: Instant,
    proxy_protocol: bool,
) {
    let pool = &ctx.buffers;
    let drain = ctx.drain.register();
    let mut deadline = Some(first_deadline);
    let mut d = Downstream {
        conn,
        x: pool.take(),
    };
    // Within the first head's deadline; anything but a valid header
    // closes the connection unanswered.
    if proxy_protocol
        && !ctx
            .stage_slots
            .run(|| read_proxy_header(&mut d, first_deadline))
            .await
    {
        pool.put(d.x);
        return;
    }
    loop {
        // Between requests on a keep-alive connection, with nothing read
        // ahead, wait for the next bytes: a while with the read armed, then
        // without buffers (see `worker::buffers`).
        let between = deadline.is_none() && d.x.start >= d.x.rbuf.len();
        if between && ctx.park_idle && d.conn.stream.can_park() {
            let Downstream { conn, x } = d;
            let Some(x) = wait_next(conn, x, ctx, &drain).await else {
                return;
            };
            d = Downstream { conn, x };
        }
        let next = ctx
            .stage_slots
            .run(|| request(ctx, &mut d, deadline, &drain))
            .await;
        if next == Next::Close {
            break;
        }
        if deadline.take().is_some() {
            // A second request: the connection is worth its registered slot.
            d.conn.stream.expect_reuse();
        }
    }
    pool.put(d.x);
}

/// One request on the connection: its head, its stages and its log phase.
async fn request<S: Stream + Park>(
    ctx: &WorkerCtx,
    d: &mut Downstream<'_, S>,
    deadline: Option<Instant>,
    drain: &DrainGuard<'_>,
) -> Next {
    // A response left unsent, with the next request read ahead.
    if !flush(d).await {
        return Next::Close;
    }
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
                &mut d.x.wbuf,
                err,
                &id,
                ConnHeader::Close,
                &[&d.x.gateway_fields],
            );
            d.x.rec.status = err.status();
            d.x.rec.bytes_out = d.x.wbuf.len() as u64;
            d.x.rec.bytes_in = d.x.rbuf.len().saturating_sub(d.x.start) as u64;
            let written = write_all(&mut d.conn.stream, &mut d.x.wbuf).await.is_ok();
            finish(ctx, &snap, d, None, Method::Other, &id);
            if written {
                linger_close(d).await;
            }
            return Next::Close;
        }
    }
    let next = exchange(ctx, &snap, d).await;
    if next == Next::Close || ctx.drain.is_draining() {
        if flush(d).await {
            d.conn.stream.finish().await;
        }
        return Next::Close;
    }
    Next::KeepAlive
}

/// Reads the PROXY protocol header and takes its source as the peer.
/// Returns `false` when the connection must close.
async fn read_proxy_header<S: Stream>(d: &mut Downstream<'_, S>, until: Instant) -> bool {
    match crate::security::proxy_protocol::read_header(&mut d.conn.stream, &mut d.x.rbuf, until)
        .await
    {
        Some((len, source)) => {
            d.x.start += len;
            if let Some(source) = source {
                d.conn.peer = source;
            }
            true
        }
        None => {
            tracing::debug!(peer = %d.conn.peer, "invalid or missing PROXY protocol header; closing");
            false
        }
    }
}

/// Reads until a complete request head is at `d.x.start`.
async fn read_head<S: Stream>(
    d: &mut Downstream<'_, S>,
    cfg: &Config,
    mut deadline: Option<Instant>,
    drain: &DrainGuard<'_>,
) -> HeadOutcome {
    let limits = &cfg.limits.head;
    d.x.rec.reset();
    d.x.rec.started = None;
    loop {
        if d.x.start < d.x.rbuf.len() {
            if d.x.rec.started.is_none() {
                d.x.rec.started = Some(loop_now());
            }
            match parse_request(&d.x.rbuf[d.x.start..], limits, &mut d.x.head) {
                Ok(Parse::Complete) => return HeadOutcome::Ready,
                Ok(Parse::Partial) => {}
                Err(e) => return HeadOutcome::Error(e.into()),
            }
            // The head timeout runs from its first byte on keep-alive connections.
            deadline.get_or_insert_with(|| loop_now() + cfg.timeouts.request_head);
            // Keep a partial head at the front so it can use the whole buffer.
            if d.x.start > 0 {
                d.x.rbuf.copy_within(d.x.start.., 0);
                d.x.rbuf.truncate(d.x.rbuf.len() - d.x.start);
                d.x.start = 0;
            }
            if d.x.rbuf.len() == d.x.rbuf.capacity() {
                d.x.rbuf.reserve(
                    (limits.max_header_bytes + 1)
                        .saturating_sub(d.x.rbuf.len())
                        .max(1024),
                );
            }
        } else {
            make_room(&mut d.x.rbuf, &mut d.x.start);
        }
        let idle = d.x.rbuf.is_empty();
        let wait = match deadline {
            Some(t) => t.saturating_duration_since(loop_now()),
            None => cfg.timeouts.keepalive_idle,
        };
        let read = monoio::time::timeout(wait, read_into(&mut d.conn.stream, &mut d.x.rbuf));
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

/// Sends the response in `d.x.wbuf` that [`send_last`] left unsent, if
/// any. Returns `false` when the send failed.
async fn flush<S: Stream>(d: &mut Downstream<'_, S>) -> bool {
    if !std::mem::take(&mut d.x.unsent) {
        return true;
    }
    write_all(&mut d.conn.stream, &mut d.x.wbuf).await.is_ok()
}

/// Sends the whole response in `d.x.wbuf`, or, when the connection stays
/// open and the response fits `SEND_BUF`, leaves it for [`wait_next`]
/// to send in one submission with the held read that waits for the next
/// request: the thread is then not woken for the send
/// (`Park::send_then_read_held`). Every path from here either holds that
/// read or [`flush`]es first. The log phase then runs before the bytes
/// reach the socket, a turn of the event loop at most: the access log's
/// duration ends when the response is ready to send.
pub async fn send_last<S: Stream>(d: &mut Downstream<'_, S>, keep: bool) -> std::io::Result<()> {
    if keep && d.conn.send_with_hold && d.x.wbuf.len() <= SEND_BUF {
        d.x.unsent = true;
        return Ok(());
    }
    write_all(&mut d.conn.stream, &mut d.x.wbuf).await
}

/// Waits for an idle keep-alive connection's next request (io_uring only),
/// its buffers back in the pool meanwhile (see `worker::buffers`). A
/// response [`send_last`] left unsent goes first, from a buffer of its
/// own (`SEND_BUF`), linked to the held read.
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
/// The connection's exchange `x` goes back to the pool meanwhile. Returns
/// one from the pool again, holding the bytes that came, or `None` when
/// the connection is to close: idle timeout, end of stream, error or
/// drain.
async fn wait_next<S: Stream + Park>(
    conn: &mut Connection<S>,
    mut x: Box<Exchange>,
    ctx: &WorkerCtx,
    drain: &DrainGuard<'_>,
) -> Option<Box<Exchange>> {
    let (idle, armed) = {
        let t = &ctx.snapshot().config.timeouts;
        (
            t.keepalive_idle,
            t.keepalive_park_after.min(t.keepalive_idle),
        )
    };
    let pool = &ctx.buffers;
    let stream = &mut conn.stream;
    // At most `MAX_HELD` connections of a worker hold a read; past that
    // one parks at once, for all of `idle`.
    let holding = if armed.is_zero() { None } else { pool.hold() };
    let mut unsent = None;
    if std::mem::take(&mut x.unsent) {
        if holding.is_some() {
            let mut send = pool.take_send();
            send.extend_from_slice(&x.wbuf);
            unsent = Some(send);
        } else {
            let sent = ctx.stage_slots.run(|| write_all(stream, &mut x.wbuf)).await;
            if sent.is_err() {
                pool.put(x);
                return None;
            }
        }
    }
    pool.put(x);
    stream.release(pool);
    let armed = if holding.is_some() {
        armed
    } else {
        Duration::ZERO
    };
    if holding.is_some() {
        // In a stage slot: its read's future is larger than the rest of
        // the connection's waiting state.
        match ctx
            .stage_slots
            .run(|| hold(stream, ctx, armed, drain, unsent))
            .await
        {
            Held::Bytes(bytes) => {
                stream.restore(pool);
                let mut x = pool.take();
                stream.received(&bytes, &mut x.rbuf);
                pool.put_hold(bytes);
                return Some(x);
            }
            Held::Quiet => {}
            Held::Close => return None,
        }
    }
    drop(holding);
    let woke =
        armed < idle && !ctx.drain.is_draining() && park(stream, ctx, idle - armed, drain).await;
    woke.then(|| {
        stream.restore(pool);
        pool.take()
    })
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

/// Reads into a hold buffer for at most `wait`, or until a drain; sends
/// `unsent` first, in the same submission where the stream links the two.
/// A send still waiting for room when the wait ends is cancelled with the
/// read, and the connection closes.
async fn hold<S: Stream + Park>(
    stream: &mut S,
    ctx: &WorkerCtx,
    wait: Duration,
    drain: &DrainGuard<'_>,
    mut unsent: Option<Vec<u8>>,
) -> Held {
    let pool = &ctx.buffers;
    let mut buf = pool.take_hold();
    let mut canceller = pool.take_canceller();
    let timer = ctx.idle_timers.start(wait);
    let result = {
        let handle = canceller.handle();
        let mut read = std::pin::pin!(async {
            match &mut unsent {
                Some(send) => stream.send_then_read_held(send, &mut buf, handle).await,
                None => stream
                    .read_held(&mut buf, handle)
                    .await
                    .map_err(SendReadError::Read),
            }
        });
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
    if let Some(send) = unsent {
        pool.put_send(send);
    }
    let held = match result {
        Ok(n) if n > 0 => return Held::Bytes(buf),
        Err(SendReadError::Read(e)) if e.raw_os_error() == Some(libc::ECANCELED) => Held::Quiet,
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
async fn exchange<S: Stream>(ctx: &WorkerCtx, snap: &Snapshot, d: &mut Downstream<'_, S>) -> Next {
    let cfg = &snap.config;
    d.x.rec.bytes_in = d.x.head.len as u64;
    d.x.decoder.limit(cfg.limits.head.max_header_bytes);
    d.use_config(snap);
    d.x.extra.clear();
    d.x.identity.clear();
    d.x.buffered = false;
    let view = RequestView {
        head: &d.x.head,
        buf: &d.x.rbuf[d.x.start..],
    };
    let id = match view.head.request_id {
        Some(s) => RequestId::from_client(s.get(view.buf)),
        None => ctx.request_ids.generate(),
    };
    let method = d.x.head.method;
    // normalise the path, then find the client, then route
    let normalized = path::normalize(view.path(), &mut d.x.path, &mut d.x.path_scratch);
    if normalized.is_err() {
        d.x.path.clear();
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
    d.x.rec.client = Some(client_ip(
        d.conn.peer.ip(),
        xff,
        &cfg.security.trusted_proxies,
    ));
    let redirecting = cfg
        .listeners
        .get(d.conn.listener)
        .is_some_and(|l| l.redirect.is_some());
    let route = match normalized {
        Ok(_) if !redirecting => cfg.router.find_for(&view, &d.x.path, routing_method(&view)),
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
    d: &mut Downstream<'_, S>,
    route: Option<&Route>,
    normalized: Result<Anomalies, PathError>,
    id: &RequestId,
) -> Next {
    let cfg = &snap.config;
    let has_body = d.x.head.framing != Framing::Empty;
    // A body the gateway does not read leaves the connection unusable.
    let keep = d.x.head.keep_alive && !has_body;
    let client = d.x.rec.client.unwrap_or(d.conn.peer.ip());

    // path normalisation and the global IP filter come before routing
    let Ok(anomalies) = normalized else {
        capture_for_log(ctx, snap, d, None);
        return respond_error(d, GatewayError::InvalidPath, id, keep).await;
    };
    if !cfg.security.ip_filter.permits(client) {
        capture_for_log(ctx, snap, d, None);
        deny(ctx, &ctx.unmatched, None, client, &d.x.path, id);
        return respond_error(d, GatewayError::Forbidden, id, keep).await;
    }

    // a redirecting listener answers every request itself
    if let Some(redirect) = cfg
        .listeners
        .get(d.conn.listener)
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
            &d.x.path,
            id,
        );
        return respond_error(d, GatewayError::Forbidden, id, keep).await;
    }

    // CORS: preflights are answered here; other requests from an allowed
    // origin get the CORS fields on whatever response they receive
    if let Some(cors) = &policy.cors {
        let view = RequestView {
            head: &d.x.head,
            buf: &d.x.rbuf[d.x.start..],
        };
        if let Some(origin) = view.header(b"origin") {
            let requested = view.header(b"access-control-request-method");
            match (view.head.method, requested) {
                (Method::Options, Some(m)) => {
                    let headers = view.header(b"access-control-request-headers");
                    if !cors.preflight(origin, m.trim_ascii(), headers, &mut d.x.extra) {
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
                    render_empty(
                        &mut d.x.wbuf,
                        204,
                        id,
                        conn,
                        &[&d.x.gateway_fields, &d.x.extra],
                    );
                    d.x.rec.status = 204;
                    d.x.rec.bytes_out = d.x.wbuf.len() as u64;
                    return match write_all(&mut d.conn.stream, &mut d.x.wbuf).await {
                        Ok(()) if keep => Next::KeepAlive,
                        _ => Next::Close,
                    };
                }
                _ => cors.response_fields(origin, &mut d.x.extra),
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
            head: &d.x.head,
            buf: &d.x.rbuf[d.x.start..],
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
                render_fields(&mut d.x.extra, &route.rate_limits[i], &dec);
            }
            Verdict::Allowed(_) => {}
            Verdict::Limited(i, dec) => {
                let p = &route.rate_limits[i];
                render_fields(&mut d.x.extra, p, &dec);
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
            head: &d.x.head,
            buf: &d.x.rbuf[d.x.start..],
        };
        if let Err(e) = rules.check(&view, &mut d.x.scratch) {
            if e == GatewayError::MethodNotAllowed {
                d.x.extra.extend_from_slice(b"allow: ");
                d.x.extra.extend_from_slice(rules.allow());
                d.x.extra.extend_from_slice(b"\r\n");
            }
            return respond_error(d, e, id, keep).await;
        }
    }
    // body limit, decided before reading any of it when the length is known
    if let Framing::Length(n) = d.x.head.framing {
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
/// lines for the upstream rendered into `d.x.identity`), or `Err` when the
/// request was answered here: 401/403, or 503 when a token introspection
/// endpoint gave no answer. A token the worker has no answer for waits on
/// the introspection pool; each endpoint is asked at most once per request.
#[allow(clippy::too_many_arguments)]
async fn authenticate<'c, S: Stream>(
    ctx: &WorkerCtx,
    snap: &'c Snapshot,
    d: &mut Downstream<'_, S>,
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
            head: &d.x.head,
            buf: &d.x.rbuf[d.x.start..],
        };
        let now = unix_now();
        let cert = d.conn.secure.client_principal.as_ref();
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
            ra.render_forward(&who, &mut d.x.identity);
            Ok(who)
        }
        Err(denied) => {
            let stats = &snap.route_stats[route.order];
            let (counter, error) = match denied {
                Denied::Forbidden(_) => (&stats.forbidden, GatewayError::Forbidden),
                _ => (&stats.unauthenticated, GatewayError::Unauthorized),
            };
            counter.set(counter.get() + 1);
            denied.challenge(ra, &mut d.x.extra);
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
    d: &mut Downstream<'_, S>,
    direct: &crate::routing::DirectResponse,
    id: &RequestId,
    keep: bool,
) -> Next {
    let head_only = d.x.head.method == Method::Head;
    let conn = d.conn_header(keep);
    d.consume_head();
    render_direct(
        &mut d.x.wbuf,
        direct,
        id,
        conn,
        head_only,
        &[&d.x.gateway_fields, &d.x.extra],
    );
    d.x.rec.status = direct.status;
    d.x.rec.bytes_out = d.x.wbuf.len() as u64;
    match send_last(d, keep).await {
        Ok(()) if keep => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Answers with a redirect to the same host, path and query over https.
async fn redirect_https<S: Stream>(
    d: &mut Downstream<'_, S>,
    redirect: &crate::routing::redirect::HttpsRedirect,
    id: &RequestId,
    keep: bool,
) -> Next {
    let view = RequestView {
        head: &d.x.head,
        buf: &d.x.rbuf[d.x.start..],
    };
    if let Err(e) = redirect.location(&view, &mut d.x.scratch) {
        return respond_error(d, e, id, keep).await;
    }
    push_field(&mut d.x.extra, b"location", &d.x.scratch);
    d.x.extra.extend_from_slice(b"content-length: 0\r\n");
    let conn = d.conn_header(keep);
    d.consume_head();
    render_empty(
        &mut d.x.wbuf,
        redirect.status,
        id,
        conn,
        &[&d.x.gateway_fields, &d.x.extra],
    );
    d.x.rec.status = redirect.status;
    d.x.rec.bytes_out = d.x.wbuf.len() as u64;
    match write_all(&mut d.conn.stream, &mut d.x.wbuf).await {
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
    d: &mut Downstream<'_, S>,
    route: &Route,
    id: &RequestId,
    keep: bool,
) -> Next {
    let Some(issuer) = snap.config.auth.token.as_ref() else {
        return respond_error(d, GatewayError::Unavailable, id, keep).await;
    };
    if d.x.head.method != Method::Post {
        d.x.extra.extend_from_slice(b"allow: POST\r\n");
        return respond_error(d, GatewayError::MethodNotAllowed, id, keep).await;
    }
    if !d.x.buffered {
        if let Some(next) = buffer_body(snap, d, route, id).await {
            return next;
        }
    }
    let view = RequestView {
        head: &d.x.head,
        buf: &d.x.rbuf[d.x.start..],
    };
    let answer = issuer.handle(&view, &d.x.body, unix_now());
    let direct = crate::routing::DirectResponse {
        status: answer.status,
        headers: answer.headers.into(),
        body: answer.body.into_bytes().into(),
    };
    send_direct(d, &direct, id, d.x.head.keep_alive).await
}

/// Reads the request body into `d.x.body` and checks it against the route's
/// schema. `Some(next)` when the request was answered here.
async fn buffer_and_check_json<S: Stream>(
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: &Route,
    rules: &crate::security::validate::Validate,
    id: &RequestId,
) -> Option<Next> {
    let bodyful = matches!(d.x.head.method, Method::Post | Method::Put | Method::Patch);
    if d.x.head.framing == Framing::Empty && !rules.body_required.unwrap_or(bodyful) {
        return None;
    }
    if let Some(next) = buffer_body(snap, d, route, id).await {
        return Some(next);
    }
    let keep = d.x.head.keep_alive;
    if let Err(problem) = rules.check_json(&d.x.body) {
        let mut detail = Vec::new();
        problem.render(&mut detail);
        return Some(respond_error_detail(d, GatewayError::InvalidBody, id, keep, &detail).await);
    }
    None
}

/// Reads the request body whole into `d.x.body` (up to the route's body
/// limit); it is then forwarded, if at all, as a Content-Length body from
/// there. `Some(next)` when the request was answered here. The head stays
/// where it is in the read buffer: body bytes are moved to a scratch buffer
/// and bytes after the body (pipelined requests) are put back behind it.
async fn buffer_body<S: Stream>(
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: &Route,
    id: &RequestId,
) -> Option<Next> {
    use super::body::{collect, BodyError};
    use super::io::{Inbound, ReadError};
    if d.x.head.expect_continue {
        d.x.scratch.clear();
        d.x.scratch
            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if write_all(&mut d.conn.stream, &mut d.x.scratch)
            .await
            .is_err()
        {
            return Some(Next::Close);
        }
        d.x.head.expect_continue = false;
    }
    let body_start = d.x.start + d.x.head.len;
    let mut raw = std::mem::take(&mut d.x.scratch);
    raw.clear();
    raw.extend_from_slice(&d.x.rbuf[body_start..]);
    d.x.rbuf.truncate(body_start);
    let mut raw_start = 0;
    let result = {
        let mut src = Inbound {
            stream: &mut d.conn.stream,
            buf: &mut raw,
            start: &mut raw_start,
        };
        collect(
            &mut src,
            d.x.head.framing,
            &mut d.x.body,
            &mut d.x.decoder,
            snap.config.timeouts.request_body_idle,
            route.max_body_bytes,
        )
        .await
    };
    // Pipelined bytes after the body go back to the read buffer.
    d.x.rbuf.extend_from_slice(&raw[raw_start..]);
    d.x.scratch = raw;
    let err = match result {
        Ok(n) => {
            d.x.rec.bytes_in += n;
            None
        }
        Err(BodyError::TooLarge) => Some(GatewayError::PayloadTooLarge),
        Err(BodyError::Source(ReadError::TimedOut)) => Some(GatewayError::RequestTimeout),
        Err(BodyError::Invalid(_)) => Some(GatewayError::BadRequest),
        Err(_) => return Some(Next::Close),
    };
    if let Some(err) = err {
        // The rest of the body is unread: close.
        d.x.head.framing = Framing::Empty;
        return Some(respond_error(d, err, id, false).await);
    }
    // Forwarded as a Content-Length body from the buffer.
    d.x.head.framing = Framing::Length(d.x.body.len() as u64);
    d.x.buffered = true;
    None
}

/// Answers with a gateway error. `keep` says whether the connection may
/// continue (only when the request had no body left unread).
pub async fn respond_error<S: Stream>(
    d: &mut Downstream<'_, S>,
    err: GatewayError,
    id: &RequestId,
    keep: bool,
) -> Next {
    respond_error_detail(d, err, id, keep, b"").await
}

/// [`respond_error`] with extra JSON fields in the body.
async fn respond_error_detail<S: Stream>(
    d: &mut Downstream<'_, S>,
    err: GatewayError,
    id: &RequestId,
    keep: bool,
    detail: &[u8],
) -> Next {
    let conn = d.conn_header(keep);
    d.consume_head();
    render_error_detail(
        &mut d.x.wbuf,
        err,
        id,
        conn,
        &[&d.x.gateway_fields, &d.x.extra],
        detail,
    );
    d.x.rec.status = err.status();
    d.x.rec.bytes_out += d.x.wbuf.len() as u64;
    if send_last(d, keep).await.is_err() {
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
async fn linger_close<S: Stream>(d: &mut Downstream<'_, S>) {
    if d.conn.stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        d.x.rbuf.clear();
        d.x.start = 0;
        let wait = until.saturating_duration_since(Instant::now());
        match monoio::time::timeout(wait, read_into(&mut d.conn.stream, &mut d.x.rbuf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// What an idle keep-alive connection costs is mostly its task, that
    /// is this future: it must not grow to hold a request's stages (they
    /// run in stage slots), its state (lent with the exchange) or the
    /// connection's arguments twice. It measures 776 bytes.
    #[test]
    fn a_connection_future_stays_small() {
        fn size<F, Fut>(_: &F) -> usize
        where
            F: Fn(crate::worker::Accepted, monoio::net::TcpStream, super::Secure) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let bytes = size(&super::serve::<monoio::net::TcpStream>);
        assert!(bytes <= 896, "{bytes} bytes");
    }
}

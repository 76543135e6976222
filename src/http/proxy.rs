//! Forwarding a request to an upstream and streaming the response back.
//!
//! Steps: pick an endpoint -> take a pooled connection or connect -> write the
//! rewritten request head -> stream the request body -> read the response
//! head -> write the rewritten response head -> stream the response body ->
//! return the connection to the pool when the exchange allows reuse.
//!
//! Header rewriting (RFC 9110 7.6): hop-by-hop fields (`Connection`,
//! `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`, and every field `Connection` names) are removed both ways;
//! framing fields are regenerated; `X-Forwarded-For` is appended to,
//! `X-Forwarded-Proto`/`X-Forwarded-Host` are set; `X-Request-Id` is set on
//! the request and the response.
//!
//! Failure mapping: connect refused/reset and invalid or truncated responses
//! -> 502; connect and response-head timeouts -> 504; no usable endpoint ->
//! 503. A reused pooled connection that turns out dead before any response
//! byte is retried once on a fresh connection, but only for idempotent
//! requests without a body; other requests only get pooled connections that
//! passed a liveness check.

use std::net::{IpAddr, SocketAddr};

use monoio::time::{loop_now, Instant};

use super::body::{self, BodyError, Encode};
use super::conn::{respond_error, send_last, Downstream, Next};
use super::head::{
    parse_response, trim, Framing, Header, Method, Parse, RequestView, ResponseHead, Version,
};
use super::io::{
    read_into, read_into_awaiting, write_all, write_gather, write_range_more, ReadError,
    SendReadError, Stream,
};
use super::response::{push_field, push_ip, push_u64, RequestId};
use crate::error::GatewayError;
use crate::observability::metrics::UpstreamErrorKind;
use crate::routing::{ProxyAction, Route};
use crate::security::HeaderPolicy;
use crate::security::LengthMask;
use crate::sys::Gather;
use crate::upstream::{balancer, ConnectError, Endpoint, UpstreamStream};
use crate::worker::{Snapshot, WorkerCtx};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The most body bytes that arrived with a response head to copy behind it
/// rather than gather from the upstream buffer. On io_uring a send costs
/// the kernel less than a writev of the same bytes (no iovec import, file
/// permission hook or fsnotify event), more than a copy this size costs.
const COPY_WITH_HEAD: usize = 4096;

/// Counts a request as outstanding on an endpoint for least-request.
struct InFlight<'a>(&'a Endpoint);

impl<'a> InFlight<'a> {
    fn new(ep: &'a Endpoint) -> Self {
        ep.in_flight.set(ep.in_flight.get() + 1);
        Self(ep)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// Why an attempt on one upstream connection failed.
enum Attempt {
    /// Dead pooled connection before any response byte: try a fresh one.
    Retry,
    Fail(Next),
}

/// Forwards the request in `d` to the route's cluster.
pub async fn forward<S: Stream>(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: &Route,
    action: &ProxyAction,
    id: &RequestId,
) -> Next {
    let cfg = &snap.config;
    let cluster = &snap.upstreams.clusters[action.cluster];
    let method = d.x.head.method;
    let framing = d.x.head.framing;
    let retryable = method.is_idempotent() && framing == Framing::Empty;
    let no_body_keep = d.x.head.keep_alive && framing == Framing::Empty;
    let key_hash = match cluster.balancer {
        crate::upstream::Balancer::ConsistentHash { .. } => {
            let view = d.view();
            match &cluster.config.hash_header {
                Some(name) => balancer::hash(view.header(name).unwrap_or_default()),
                None => hash_ip(d.conn.peer.ip()),
            }
        }
        _ => 0,
    };

    // pick upstream: connect errors are always safe to retry elsewhere
    let now = loop_now();
    let mut tried = 0u64;
    let mut last = GatewayError::Unavailable;
    let mut attempts = 0;
    let (ep, mut up, mut reused) = loop {
        let Some(i) = cluster.pick(key_hash, tried, now) else {
            return respond_error(d, last, id, no_body_keep).await;
        };
        let ep = &cluster.endpoints[i];
        if let Some(conn) = ep.take_idle(&cluster.config.pool, !retryable, now) {
            break (ep, conn, true);
        }
        match ep
            .connect(&cluster.config, cfg.timeouts.upstream_connect)
            .await
        {
            Ok(conn) => break (ep, conn, false),
            Err(e) => {
                tracing::debug!(cluster = %cluster.config.name, endpoint = %ep.address, error = %e, "upstream connect failed");
                let (err, kind) = match e {
                    ConnectError::TimedOut => {
                        (GatewayError::GatewayTimeout, UpstreamErrorKind::Timeout)
                    }
                    ConnectError::Failed(_) => {
                        (GatewayError::BadGateway, UpstreamErrorKind::Connect)
                    }
                    ConnectError::Tls(_) => (GatewayError::BadGateway, UpstreamErrorKind::Tls),
                };
                cluster.stats.error(kind);
                last = err;
                tried |= 1u64.checked_shl(i as u32).unwrap_or(0);
                attempts += 1;
                if attempts >= cluster.config.connect_attempts {
                    return respond_error(d, last, id, no_body_keep).await;
                }
            }
        }
    };
    let _in_flight = InFlight::new(ep);
    d.x.rec.endpoint = Some(ep.address);

    let traceparent = d.x.rec.traceparent;
    let upstream_head = UpstreamHead {
        path: &d.x.path,
        action,
        prefix_len: route.path.prefix_len(),
        via: cfg.via,
        endpoint: ep.address,
        peer: d.conn.peer.ip(),
        id,
        traceparent: traceparent.as_ref().map(|t| &t[..]),
        strip: route.auth.as_ref().map_or(&[], |a| &a.strip[..]),
        strip_always: &cfg.client_cert_headers,
        identity: &d.x.identity,
        client_cert: &d.conn.secure.client_cert,
        tls: d.conn.secure.is_tls(),
        strip_cookie: route.auth.as_ref().and_then(|a| a.strip_cookie.as_deref()),
        strip_query: route.auth.as_ref().and_then(|a| a.strip_query.as_deref()),
    };
    let view = RequestView {
        head: &d.x.head,
        buf: &d.x.rbuf[d.x.start..],
    };
    render_request_head(&mut d.x.wbuf, view, &upstream_head);
    d.consume_head();

    // The loop's time (one clock read per wake-up, not per call): `now`
    // if a pooled connection was taken in this turn of the loop, later if
    // one had to be opened.
    let sent = loop_now();
    let mut attempt_at = sent;
    loop {
        up.requests += 1;
        up.buf.clear();
        // One dispatch on the upstream stream's kind per attempt, rather
        // than one per read and write: the exchange's futures then have
        // the size of a plain socket's on plain connections, and moving
        // them into place costs less.
        let ubuf = &mut up.buf;
        let result = match &mut up.stream {
            UpstreamStream::Plain(s) => {
                attempt(ctx, snap, d, route, ep, s, ubuf, attempt_at, id).await
            }
            UpstreamStream::Tls(s) => {
                attempt(ctx, snap, d, route, ep, &mut **s, ubuf, attempt_at, id).await
            }
        };
        let done = loop_now();
        d.x.rec.upstream = Some(done.saturating_duration_since(sent));
        match result {
            Ok((next, reusable)) => {
                if reusable {
                    ep.release(up, &cluster.config.pool, done);
                }
                return next;
            }
            Err(Attempt::Retry) if reused && retryable => {
                match ep
                    .connect(&cluster.config, cfg.timeouts.upstream_connect)
                    .await
                {
                    Ok(conn) => {
                        up = conn;
                        reused = false;
                        attempt_at = loop_now();
                    }
                    Err(_) => {
                        cluster.stats.error(UpstreamErrorKind::Connect);
                        return fail(d, GatewayError::BadGateway, id).await;
                    }
                }
            }
            Err(Attempt::Retry) => {
                cluster.stats.error(UpstreamErrorKind::Reset);
                return fail(d, GatewayError::BadGateway, id).await;
            }
            Err(Attempt::Fail(next)) => return next,
        }
    }
}

/// A gateway error after the request head was consumed: the request body
/// state is unknown, so the connection closes.
async fn fail<S: Stream>(d: &mut Downstream<'_, S>, err: GatewayError, id: &RequestId) -> Next {
    d.x.head.len = 0;
    respond_error(d, err, id, false).await
}

/// One try of the exchange on one upstream connection (its stream and its
/// empty read buffer), begun at `began`. `d.x.wbuf` holds the upstream
/// request head. On success, also says whether the connection may be
/// pooled.
#[allow(clippy::too_many_arguments)]
async fn attempt<S: Stream, U: Stream>(
    ctx: &WorkerCtx,
    snap: &Snapshot,
    d: &mut Downstream<'_, S>,
    route: &Route,
    ep: &Endpoint,
    upstream: &mut U,
    ubuf: &mut Vec<u8>,
    began: Instant,
    id: &RequestId,
) -> Result<(Next, bool), Attempt> {
    let cfg = &snap.config;
    let t = &cfg.timeouts;
    let framing = d.x.head.framing;
    let version = d.x.head.version;
    let head_request = d.x.head.method == Method::Head;
    let ep_stats = &ep.stats;

    // request head (wbuf keeps it until a response begins, for a retry);
    // without a body it leaves with the response head's first read
    let head_alone = !d.x.buffered && framing == Framing::Empty;
    // Before a body of known length the head says more follows: it leaves
    // in the body's first segment, and the upstream wakes once for both.
    let body_follows = if d.x.buffered {
        !d.x.body.is_empty()
    } else {
        matches!(framing, Framing::Length(_))
    };
    let len = d.x.wbuf.len();
    if !head_alone
        && write_range_more(upstream, &mut d.x.wbuf, 0..len, body_follows)
            .await
            .is_err()
    {
        return Err(Attempt::Retry);
    }

    // request body: read whole already (JSON Schema routes), or streamed
    if d.x.buffered {
        if write_all(upstream, &mut d.x.body).await.is_err() {
            ep.stats.error(UpstreamErrorKind::Reset);
            return Err(Attempt::Fail(fail(d, GatewayError::BadGateway, id).await));
        }
    } else if framing != Framing::Empty {
        if d.x.head.expect_continue {
            d.x.scratch.clear();
            d.x.scratch.extend_from_slice(CONTINUE);
            if write_all(&mut d.conn.stream, &mut d.x.scratch)
                .await
                .is_err()
            {
                return Err(Attempt::Fail(Next::Close));
            }
        }
        let encode = if framing == Framing::Chunked {
            Encode::Chunked
        } else {
            Encode::Identity
        };
        let mut src = super::io::Inbound {
            stream: &mut d.conn.stream,
            buf: &mut d.x.rbuf,
            start: &mut d.x.start,
        };
        let result = body::copy(
            &mut src,
            upstream,
            framing,
            encode,
            &mut d.x.scratch,
            &mut d.x.decoder,
            t.request_body_idle,
            route.max_body_bytes,
            true,
        )
        .await;
        if let Ok(n) = result {
            d.x.rec.bytes_in += n;
        }
        if let Err(e) = result {
            let err = match e {
                BodyError::Sink(_) => {
                    ep_stats.error(UpstreamErrorKind::Reset);
                    GatewayError::BadGateway
                }
                BodyError::Source(ReadError::TimedOut) => GatewayError::RequestTimeout,
                BodyError::Invalid(_) => GatewayError::BadRequest,
                BodyError::TooLarge => GatewayError::PayloadTooLarge,
                BodyError::Source(ReadError::Io(_)) | BodyError::SourceClosed => {
                    return Err(Attempt::Fail(Next::Close));
                }
            };
            return Err(Attempt::Fail(fail(d, err, id).await));
        }
    }

    // response head, skipping interim responses; its timeout runs from
    // when the request was sent: when the attempt began, or now if a body
    // followed the head
    let max_head = cfg.limits.head.max_header_bytes;
    let mut deadline = if d.x.buffered || framing != Framing::Empty {
        loop_now()
    } else {
        began
    } + t.upstream_response_head;
    // Once an interim response arrived the response has begun (and wbuf may
    // hold it): a dead connection is then an error, never a retry.
    let mut interim_seen = false;
    let mut unsent = head_alone;
    loop {
        match read_response_head(
            upstream,
            std::mem::take(&mut unsent).then_some(&mut d.x.wbuf),
            ubuf,
            &mut d.x.response,
            head_request,
            deadline,
            max_head,
        )
        .await
        {
            Ok(()) => {}
            Err(RespError::NotSent) => return Err(Attempt::Retry),
            Err(RespError::ClosedEarly) if framing == Framing::Empty && !interim_seen => {
                return Err(Attempt::Retry)
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.address, error = e.as_str(), "upstream response failed");
                ep_stats.error(e.kind());
                let err = if matches!(e, RespError::TimedOut) {
                    GatewayError::GatewayTimeout
                } else {
                    GatewayError::BadGateway
                };
                return Err(Attempt::Fail(fail(d, err, id).await));
            }
        }
        let status = d.x.response.status;
        if !(100..200).contains(&status) {
            break;
        }
        if status == 101 {
            // ringgate never forwards Upgrade, so a switch is a protocol error.
            ep_stats.error(UpstreamErrorKind::Invalid);
            return Err(Attempt::Fail(fail(d, GatewayError::BadGateway, id).await));
        }
        // 100 was answered by the gateway itself; other 1xx go to 1.1 clients.
        if status != 100 && version == Version::Http11 {
            write_interim(&mut d.x.wbuf, &d.x.response, ubuf);
            d.x.rec.bytes_out += d.x.wbuf.len() as u64;
            if write_all(&mut d.conn.stream, &mut d.x.wbuf).await.is_err() {
                return Err(Attempt::Fail(Next::Close));
            }
        }
        interim_seen = true;
        let len = d.x.response.len;
        ubuf.drain(..len);
        deadline = loop_now() + t.upstream_response_head;
    }

    // response head to the client
    let resp_framing = d.x.response.framing;
    let encode = match (resp_framing, version) {
        (Framing::Empty | Framing::Length(_), _) => Encode::Identity,
        (_, Version::Http11) => Encode::Chunked,
        (_, Version::Http10) => Encode::Raw,
    };
    let keep = d.x.head.keep_alive && encode != Encode::Raw && !ctx.drain.is_draining();
    write_response_head(
        d,
        ubuf,
        encode,
        keep,
        id,
        cfg.via,
        head_request,
        &route.policy.headers,
    );
    let mut up_start = d.x.response.len;
    // Body bytes that arrived with the head leave with it, in one socket
    // operation for a response that fits the upstream buffer: up to
    // `COPY_WITH_HEAD` of them copied behind the head and sent, more in
    // one writev from the upstream buffer.
    let with_head = match (resp_framing, encode) {
        (Framing::Length(n), Encode::Identity) => {
            (ubuf.len() - up_start).min(usize::try_from(n).unwrap_or(usize::MAX))
        }
        _ => 0,
    };
    d.x.rec.status = d.x.response.status;
    d.x.rec.bytes_out += (d.x.wbuf.len() + with_head) as u64;
    let written = if with_head <= COPY_WITH_HEAD {
        d.x.wbuf
            .extend_from_slice(&ubuf[up_start..up_start + with_head]);
        let whole = match resp_framing {
            Framing::Empty => true,
            Framing::Length(n) => n == with_head as u64,
            _ => false,
        };
        if whole {
            send_last(d, keep).await
        } else {
            write_all(&mut d.conn.stream, &mut d.x.wbuf).await
        }
    } else {
        let head_len = d.x.wbuf.len();
        let gather = Gather::new(
            std::mem::take(&mut d.x.wbuf),
            0..head_len,
            std::mem::take(ubuf),
            up_start..up_start + with_head,
            std::mem::take(&mut d.x.iov),
        );
        let (written, gather) = write_gather(&mut d.conn.stream, gather).await;
        (d.x.wbuf, *ubuf, d.x.iov) = gather.into_parts();
        written
    };
    if written.is_err() {
        return Err(Attempt::Fail(Next::Close));
    }
    up_start += with_head;
    let resp_framing = match resp_framing {
        Framing::Length(n) if n == with_head as u64 => Framing::Empty,
        Framing::Length(n) => Framing::Length(n - with_head as u64),
        other => other,
    };

    // response body
    let mut src = super::io::Inbound {
        stream: upstream,
        buf: ubuf,
        start: &mut up_start,
    };
    let result = body::copy(
        &mut src,
        &mut d.conn.stream,
        resp_framing,
        encode,
        &mut d.x.scratch,
        &mut d.x.decoder,
        t.upstream_idle,
        u64::MAX,
        false,
    )
    .await;
    let sent = match result {
        Ok(n) => n,
        Err(e) => {
            // The status is already sent: all that is left is to cut the
            // connection so the client sees an incomplete body.
            tracing::debug!(endpoint = %ep.address, error = %e, "response body aborted");
            if matches!(
                e,
                BodyError::Source(_) | BodyError::SourceClosed | BodyError::Invalid(_)
            ) {
                ep_stats.error(match e {
                    BodyError::Invalid(_) => UpstreamErrorKind::Invalid,
                    BodyError::Source(ReadError::TimedOut) => UpstreamErrorKind::Timeout,
                    _ => UpstreamErrorKind::Reset,
                });
            }
            return Err(Attempt::Fail(Next::Close));
        }
    };
    d.x.rec.bytes_out += sent;

    let reusable =
        d.x.response.keep_alive && resp_framing != Framing::UntilClose && up_start == ubuf.len();
    if reusable {
        ubuf.clear();
    }
    Ok((if keep { Next::KeepAlive } else { Next::Close }, reusable))
}

#[derive(Debug)]
enum RespError {
    /// The request head could not be sent (the connection is dead).
    NotSent,
    /// The upstream closed before sending a byte (stale pooled connection).
    ClosedEarly,
    /// Closed in the middle of the head.
    Truncated,
    TimedOut,
    Io,
    Invalid,
}

impl RespError {
    fn kind(&self) -> UpstreamErrorKind {
        match self {
            RespError::NotSent | RespError::ClosedEarly | RespError::Truncated | RespError::Io => {
                UpstreamErrorKind::Reset
            }
            RespError::TimedOut => UpstreamErrorKind::Timeout,
            RespError::Invalid => UpstreamErrorKind::Invalid,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            RespError::NotSent => "request head not sent",
            RespError::ClosedEarly => "closed before responding",
            RespError::Truncated => "closed inside the response head",
            RespError::TimedOut => "response head timed out",
            RespError::Io => "read error",
            RespError::Invalid => "invalid response head",
        }
    }
}

/// Reads a complete response head into `buf` by `deadline` and parses it
/// into `resp`; with `send`, sends that request head first, in the same
/// submission as the first read where the stream can (see
/// [`Stream::send_then_read_awaiting`]).
async fn read_response_head<U: Stream>(
    upstream: &mut U,
    mut send: Option<&mut Vec<u8>>,
    buf: &mut Vec<u8>,
    resp: &mut ResponseHead,
    head_request: bool,
    deadline: Instant,
    max_head: usize,
) -> Result<(), RespError> {
    loop {
        if !buf.is_empty() {
            match parse_response(buf, max_head, head_request, resp) {
                Ok(Parse::Complete) => return Ok(()),
                Ok(Parse::Partial) => {}
                Err(_) => return Err(RespError::Invalid),
            }
        }
        // The first read waits for the response just asked for: nothing
        // is there yet (see `Stream::read_awaiting`).
        let read = async {
            if let Some(wbuf) = send.take() {
                upstream.send_then_read_awaiting(wbuf, buf).await
            } else if buf.is_empty() {
                read_into_awaiting(upstream, buf)
                    .await
                    .map_err(SendReadError::Read)
            } else {
                read_into(upstream, buf).await.map_err(SendReadError::Read)
            }
        };
        match monoio::time::timeout_at(deadline, read).await {
            Ok(Err(SendReadError::Send(_))) => return Err(RespError::NotSent),
            Ok(Ok(0)) if buf.is_empty() => return Err(RespError::ClosedEarly),
            Ok(Ok(0)) => return Err(RespError::Truncated),
            Ok(Ok(_)) => {}
            Ok(Err(SendReadError::Read(e))) if buf.is_empty() && is_reset(&e) => {
                return Err(RespError::ClosedEarly)
            }
            Ok(Err(SendReadError::Read(_))) => return Err(RespError::Io),
            Err(_) => return Err(RespError::TimedOut),
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => balancer::hash(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => balancer::hash(&v4.octets()),
            None => balancer::hash(&v6.octets()),
        },
    }
}

/// RFC 9110 7.6.1 hop-by-hop fields (lowercase).
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// The `Connection` fields of a message. Built only when the parser found
/// that one of them names a field (a token other than `close` and
/// `keep-alive`, which name none that is not hop-by-hop already), so the
/// common case costs no per-field scan.
#[derive(Clone, Copy)]
struct ConnectionFields<'a> {
    headers: &'a [Header],
    buf: &'a [u8],
}

impl<'a> ConnectionFields<'a> {
    fn tokens(self) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |h| h.name.get(self.buf).eq_ignore_ascii_case(b"connection"))
            .flat_map(move |h| h.value.get(self.buf).split(|&b| b == b','))
            .map(trim)
            .filter(|t| !t.is_empty())
    }
}

/// True when a field must not be forwarded: hop-by-hop, or named by a
/// `Connection` field of the same message.
fn is_hop_by_hop(name: &[u8], listed: Option<ConnectionFields<'_>>) -> bool {
    const LENGTHS: LengthMask = LengthMask::of(&HOP_BY_HOP);
    (LENGTHS.may_hold(name) && HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)))
        || listed.is_some_and(|l| l.tokens().any(|t| t.eq_ignore_ascii_case(name)))
}

/// Copies the field lines a head keeps, as they arrived, merging lines
/// that follow each other in the source into one copy: a typical head
/// becomes two or three copies instead of four per field.
struct Lines<'a> {
    buf: &'a [u8],
    run: Option<std::ops::Range<usize>>,
}

impl<'a> Lines<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Lines { buf, run: None }
    }

    fn keep(&mut self, out: &mut Vec<u8>, h: &Header) {
        let line = h.line();
        match &mut self.run {
            Some(run)
                if run.end + 2 == line.start
                    && self.buf.get(run.end..line.start) == Some(b"\r\n") =>
            {
                run.end = line.end;
            }
            _ => {
                self.flush(out);
                self.run = Some(line);
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(run) = self.run.take() {
            out.extend_from_slice(&self.buf[run]);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What the upstream request head is built from, besides the request itself.
pub struct UpstreamHead<'a> {
    /// The normalised path (the route's prefix rewrite applies to it).
    pub path: &'a [u8],
    pub action: &'a ProxyAction,
    /// Length of the matched route prefix (for `rewrite_prefix`).
    pub prefix_len: usize,
    pub via: bool,
    /// Used as Host when the client sent none (HTTP/1.0).
    pub endpoint: SocketAddr,
    pub peer: IpAddr,
    pub id: &'a RequestId,
    /// Sent instead of the client's `traceparent`/`tracestate` when set.
    pub traceparent: Option<&'a [u8]>,
    /// Client header names not passed on (identity headers the gateway
    /// sets, credentials the route keeps to itself).
    pub strip: &'a [Box<[u8]>],
    /// Client header names never passed on (client-certificate fields).
    pub strip_always: &'a [Box<[u8]>],
    /// Identity header lines the gateway adds.
    pub identity: &'a [u8],
    /// Client-certificate header lines of the connection.
    pub client_cert: &'a [u8],
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// A cookie and a query parameter not passed on (a route's token).
    pub strip_cookie: Option<&'a [u8]>,
    pub strip_query: Option<&'a [u8]>,
}

/// Writes `query` (with its `?`) without the parameters named `name`.
fn push_query_without(out: &mut Vec<u8>, query: &[u8], name: &[u8]) {
    let mut first = true;
    for pair in query
        .strip_prefix(b"?")
        .unwrap_or(query)
        .split(|&b| b == b'&')
    {
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        if key == name || pair.is_empty() {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(pair);
        first = false;
    }
}

/// Writes a `Cookie` field without the cookie `name` (nothing when it was
/// the only one).
fn push_cookie_without(out: &mut Vec<u8>, value: &[u8], name: &[u8]) {
    let start = out.len();
    out.extend_from_slice(b"cookie: ");
    let mut kept = 0;
    for pair in value.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        if key == name || pair.is_empty() {
            continue;
        }
        if kept > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
        kept += 1;
    }
    if kept == 0 {
        out.truncate(start);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Renders the upstream request head for `view` into `out`: request line
/// with the rewritten path, Host, end-to-end fields, forwarding fields,
/// request id and canonical framing.
pub fn render_request_head(out: &mut Vec<u8>, view: RequestView<'_>, up: &UpstreamHead<'_>) {
    let (action, prefix_len, via, endpoint, id) =
        (up.action, up.prefix_len, up.via, up.endpoint, up.id);
    out.clear();
    out.extend_from_slice(view.method_bytes());
    out.push(b' ');
    let path = up.path;
    let target_start = out.len();
    match &action.rewrite_prefix {
        Some(new_prefix) => {
            let rest = &path[prefix_len.min(path.len())..];
            out.extend_from_slice(new_prefix);
            let rest = if new_prefix.ends_with(b"/") {
                rest.strip_prefix(b"/").unwrap_or(rest)
            } else {
                rest
            };
            out.extend_from_slice(rest);
        }
        None => out.extend_from_slice(path),
    }
    // origin-form always starts with "/" (absolute-form may carry no path).
    if out.get(target_start) != Some(&b'/') && path != b"*" {
        out.insert(target_start, b'/');
    }
    match up.strip_query {
        None => out.extend_from_slice(view.query()),
        Some(name) => push_query_without(out, view.query(), name),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let client_host = view.host();
    match (&action.host_rewrite, client_host) {
        (Some(h), _) => push_field(out, b"host", h),
        (None, Some(h)) if !h.is_empty() => push_field(out, b"host", h),
        (None, _) => {
            use std::io::Write;
            let _ = write!(out, "host: {endpoint}\r\n");
        }
    }

    let headers = &view.head.headers;
    let named = |name: &'static [u8]| {
        headers
            .iter()
            .filter(move |h| h.name.get(view.buf).eq_ignore_ascii_case(name))
            .map(|h| h.value.get(view.buf))
    };
    let listed = view
        .head
        .connection_lists_fields
        .then_some(ConnectionFields {
            headers,
            buf: view.buf,
        });
    let mut lines = Lines::new(view.buf);
    for h in headers {
        let name = h.name.get(view.buf);
        if is_hop_by_hop(name, listed)
            || GATEWAY_SET_REQUEST
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            || (up.traceparent.is_some()
                && (name.eq_ignore_ascii_case(b"traceparent")
                    || name.eq_ignore_ascii_case(b"tracestate")))
            || up.strip.iter().any(|n| name.eq_ignore_ascii_case(n))
            || up.strip_always.iter().any(|n| name.eq_ignore_ascii_case(n))
        {
            lines.flush(out);
            continue;
        }
        if let Some(c) = up
            .strip_cookie
            .filter(|_| name.eq_ignore_ascii_case(b"cookie"))
        {
            lines.flush(out);
            push_cookie_without(out, h.value.get(view.buf), c);
            continue;
        }
        lines.keep(out, h);
    }
    lines.flush(out);
    out.extend_from_slice(up.identity);
    out.extend_from_slice(up.client_cert);
    if let Some(t) = up.traceparent {
        push_field(out, b"traceparent", t);
    }
    // X-Forwarded-For: the client's list (several fields are one list, RFC
    // 9110 5.3) followed by the peer address.
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in named(b"x-forwarded-for") {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    push_ip(out, up.peer);
    out.extend_from_slice(if up.tls {
        &b"\r\nx-forwarded-proto: https\r\n"[..]
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    if let Some(h) = client_host {
        push_field(out, b"x-forwarded-host", h);
    }
    push_field(out, b"x-request-id", id.as_bytes());
    match view.head.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if via {
        out.extend_from_slice(b"via: 1.1 ringgate\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Request fields the gateway writes itself (or handles: `Expect`).
const GATEWAY_SET_REQUEST: [&[u8]; 7] = [
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
];

/// Response fields the gateway writes itself.
const GATEWAY_SET_RESPONSE: [&[u8]; 2] = [b"content-length", b"x-request-id"];

/// Copies the response's end-to-end fields into `out`, except those the
/// route's header policy drops and, when the gateway sets HSTS itself, the
/// upstream's `strict-transport-security`.
fn copy_response_fields(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    buf: &[u8],
    keep_length: bool,
    policy: Option<&HeaderPolicy>,
    own_hsts: bool,
) {
    let listed = resp.connection_lists_fields.then_some(ConnectionFields {
        headers: &resp.headers,
        buf,
    });
    let mut lines = Lines::new(buf);
    for h in &resp.headers {
        let name = h.name.get(buf);
        let is_length = name.eq_ignore_ascii_case(b"content-length");
        let dropped = is_hop_by_hop(name, listed)
            || policy.is_some_and(|p| p.drops(name))
            || (own_hsts && name.eq_ignore_ascii_case(b"strict-transport-security"))
            || (is_length && !keep_length)
            || (!is_length
                && GATEWAY_SET_RESPONSE
                    .iter()
                    .any(|n| name.eq_ignore_ascii_case(n)));
        if dropped {
            lines.flush(out);
        } else {
            lines.keep(out, h);
        }
    }
    lines.flush(out);
}

/// Renders an interim (1xx) response for the client.
fn write_interim(out: &mut Vec<u8>, resp: &ResponseHead, buf: &[u8]) {
    out.clear();
    super::response::status_line(out, resp.status);
    copy_response_fields(out, resp, buf, false, None, false);
    out.extend_from_slice(b"\r\n");
}

/// Renders the response head for the client into `d.x.wbuf`.
#[allow(clippy::too_many_arguments)]
fn write_response_head<S: Stream>(
    d: &mut Downstream<'_, S>,
    up_buf: &[u8],
    encode: Encode,
    keep: bool,
    id: &RequestId,
    via: bool,
    head_request: bool,
    policy: &HeaderPolicy,
) {
    let resp = &d.x.response;
    let out = &mut d.x.wbuf;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(up_buf));
    out.extend_from_slice(b"\r\n");
    // A HEAD or 304 response's Content-Length describes the representation,
    // not this message: pass it on as is (RFC 9110 8.6).
    let bodiless_meta = head_request || resp.status == 304;
    let hsts = d.conn.secure.hsts();
    copy_response_fields(
        out,
        resp,
        up_buf,
        bodiless_meta,
        Some(policy),
        !hsts.is_empty(),
    );
    policy.render(out, resp.headers.iter().map(|h| h.name.get(up_buf)));
    out.extend_from_slice(hsts);
    out.extend_from_slice(&d.x.extra);
    match (resp.framing, encode) {
        (Framing::Length(n), _) => {
            out.extend_from_slice(b"content-length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (Framing::Chunked | Framing::UntilClose, Encode::Chunked) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    push_field(out, b"x-request-id", id.as_bytes());
    if via {
        out.extend_from_slice(b"via: 1.1 ringgate\r\n");
    }
    match (keep, d.x.head.version) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, Version::Http10) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, Version::Http11) => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copied(raw: &[u8], keep_length: bool) -> String {
        let mut head = ResponseHead::default();
        assert_eq!(
            parse_response(raw, 8192, false, &mut head).unwrap(),
            Parse::Complete
        );
        let mut out = Vec::new();
        copy_response_fields(&mut out, &head, raw, keep_length, None, false);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn kept_lines_are_copied_as_they_arrived() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: origin\r\nX-Empty:\r\nX-Pad:   v  \r\nContent-Length: 2\r\nConnection: keep-alive\r\nETag: \"e\"\r\nX-Request-Id: up\r\nVary: a\r\n\r\nok";
        assert_eq!(
            copied(raw, false),
            "Server: origin\r\nX-Empty:\r\nX-Pad:   v\r\nETag: \"e\"\r\nVary: a\r\n"
        );
        assert_eq!(
            copied(raw, true),
            "Server: origin\r\nX-Empty:\r\nX-Pad:   v\r\nContent-Length: 2\r\nETag: \"e\"\r\nVary: a\r\n"
        );
    }

    #[test]
    fn fields_named_by_connection_are_dropped() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: close, X-Hop\r\nX-End: 2\r\nx-hop: 3\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(copied(raw, false), "X-End: 2\r\n");
        // Only close and keep-alive: nothing more is dropped.
        let raw = b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(copied(raw, false), "X-A: 1\r\n");
    }
}

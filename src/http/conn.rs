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

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use super::chunked::ChunkedDecoder;
use super::head::{
    parse_request, Framing, Method, Parse, RequestHead, RequestView, ResponseHead, Version,
};
use super::io::{make_room, read_into, write_all, Stream};
use super::proxy;
use super::response::{render_direct, render_error, ConnHeader, RequestId};
use crate::config::Config;
use crate::error::GatewayError;
use crate::routing::Action;
use crate::worker::{DrainGuard, Snapshot, WorkerCtx};

/// Initial read buffer per connection; grows up to `limits.max_header_bytes`
/// for a large head and is then reused for body data.
const READ_BUF: usize = 16 * 1024;
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
pub struct Downstream<S> {
    pub stream: S,
    pub peer: SocketAddr,
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
}

impl<S: Stream> Downstream<S> {
    fn new(stream: S, peer: SocketAddr, max_trailers: usize) -> Self {
        Self {
            stream,
            peer,
            rbuf: Vec::with_capacity(READ_BUF),
            start: 0,
            wbuf: Vec::with_capacity(4096),
            scratch: Vec::new(),
            head: RequestHead::default(),
            response: ResponseHead::default(),
            decoder: ChunkedDecoder::new(max_trailers),
        }
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
pub async fn serve<S: Stream>(ctx: Rc<WorkerCtx>, stream: S, peer: SocketAddr, accepted: Instant) {
    let drain = ctx.drain.register();
    let snap = ctx.snapshot();
    let mut d = Downstream::new(stream, peer, snap.config.limits.head.max_header_bytes);
    let mut deadline = Some(accepted + snap.config.timeouts.request_head);
    drop(snap);
    loop {
        let waiting = ctx.snapshot();
        let outcome = read_head(&mut d, &waiting.config, deadline, &drain).await;
        drop(waiting);
        // Each request sees one snapshot from head to end of response: the
        // newest at the time its head arrived, even on an old connection.
        let snap = ctx.snapshot();
        match outcome {
            HeadOutcome::Ready => {}
            HeadOutcome::Closed => return,
            HeadOutcome::Error(err) => {
                let id = ctx.request_ids.generate();
                render_error(&mut d.wbuf, err, &id, ConnHeader::Close);
                if write_all(&mut d.stream, &mut d.wbuf).await.is_ok() {
                    linger_close(&mut d).await;
                }
                return;
            }
        }
        let next = exchange(&ctx, &snap, &mut d).await;
        if next == Next::Close || ctx.drain.is_draining() {
            let _ = d.stream.shutdown().await;
            return;
        }
        deadline = None;
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
    loop {
        if d.start < d.rbuf.len() {
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

/// Runs one request through the pipeline.
async fn exchange<S: Stream>(ctx: &WorkerCtx, snap: &Snapshot, d: &mut Downstream<S>) -> Next {
    let cfg = &snap.config;
    let view = d.view();
    let id = match view.head.request_id {
        Some(s) => RequestId::from_client(s.get(view.buf)),
        None => ctx.request_ids.generate(),
    };
    let has_body = d.head.framing != Framing::Empty;
    // A body the gateway does not read leaves the connection unusable.
    let keep = d.head.keep_alive && !has_body;

    // route
    let Some(route) = cfg.router.find(&view) else {
        return respond_error(d, GatewayError::NotFound, &id, keep).await;
    };
    // body limit, decided before reading any of it when the length is known
    if let Framing::Length(n) = d.head.framing {
        if n > route.max_body_bytes {
            return respond_error(d, GatewayError::PayloadTooLarge, &id, false).await;
        }
    }
    match &route.action {
        Action::Respond(direct) => {
            let head_only = d.head.method == Method::Head;
            let conn = d.conn_header(keep);
            d.consume_head();
            render_direct(&mut d.wbuf, direct, &id, conn, head_only);
            match write_all(&mut d.stream, &mut d.wbuf).await {
                Ok(()) if keep => Next::KeepAlive,
                _ => Next::Close,
            }
        }
        Action::Proxy(action) => proxy::forward(ctx, snap, d, route, action, &id).await,
    }
}

/// Answers with a gateway error. `keep` says whether the connection may
/// continue (only when the request had no body left unread).
pub async fn respond_error<S: Stream>(
    d: &mut Downstream<S>,
    err: GatewayError,
    id: &RequestId,
    keep: bool,
) -> Next {
    let conn = d.conn_header(keep);
    d.consume_head();
    render_error(&mut d.wbuf, err, id, conn);
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

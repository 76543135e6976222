//! Upstream clusters as one worker sees them: endpoints, balancer, keep-alive
//! pool and passive health. Everything here is per worker (`Cell`/`RefCell`,
//! no locks): a pooled connection is only ever used by the core that opened it.
//!
//! - `balancer.rs`: round-robin, weighted, least-request (P2C), consistent hash.
//! - this file: [`Upstreams`] (all clusters), [`Endpoint`] (pool + health),
//!   [`UpstreamConn`] (a connection and its read buffer, boxed: see
//!   [`PooledConn`]).

pub mod balancer;
pub mod stream;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::net::TcpStream;
use monoio::time::{loop_now, Instant};

use crate::config::{ClusterConfig, Config, PoolConfig};
use crate::observability::metrics::{ClusterStats, WorkerStats};
pub use balancer::Balancer;
pub use stream::UpstreamStream;

/// Read buffer of an upstream connection: a response head and a 16 KiB body
/// arrive in one read and leave in one writev; large bodies move in 32 KiB
/// steps.
const UPSTREAM_BUF: usize = 32 * 1024;

/// A connection as the pool and the exchange hold it. Boxed once, when it
/// opens: taking it from the pool and putting it back then moves a pointer,
/// where the connection itself (socket, buffer, addresses: about 140 bytes)
/// took two `memmove` calls per request.
pub type PooledConn = Box<UpstreamConn>;

/// A connection to an endpoint with the buffer its responses are read into.
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub buf: Vec<u8>,
    /// Requests already sent on this connection.
    pub requests: u32,
    idle_since: Instant,
    /// Counts the close when the connection is dropped, wherever that is.
    stats: Rc<ClusterStats>,
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.stats.closed.set(self.stats.closed.get() + 1);
    }
}

/// One endpoint of a cluster, as seen by one worker.
pub struct Endpoint {
    pub address: SocketAddr,
    /// SNI and verified name, with cluster TLS.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Idle keep-alive connections, most recently used last (LIFO keeps the
    /// warmest connection busy and lets the rest time out).
    idle: RefCell<Vec<PooledConn>>,
    /// Requests this worker has outstanding on this endpoint (least-request).
    pub in_flight: Cell<u32>,
    /// Consecutive connect failures.
    fails: Cell<u32>,
    /// Ejected until then after `max_fails` consecutive failures.
    down_until: Cell<Option<Instant>>,
    /// The cluster's counters on this worker.
    pub stats: Rc<ClusterStats>,
}

/// A cluster as seen by one worker.
pub struct Cluster {
    pub config: ClusterConfig,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    /// This worker's counters for the cluster (kept across reloads by name).
    pub stats: Rc<ClusterStats>,
}

/// All clusters of one config snapshot, for one worker.
pub struct Upstreams {
    pub clusters: Box<[Cluster]>,
}

/// Why a connection could not be opened; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// 502: refused, reset, unreachable.
    #[error("connect failed: {0}")]
    Failed(io::Error),
    /// 504: `timeouts.upstream_connect` passed (TCP and TLS handshake).
    #[error("connect timed out")]
    TimedOut,
    /// 502: the TLS handshake failed (an untrusted or misnamed
    /// certificate, no common protocol version, an alert).
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

impl Upstreams {
    /// Per-worker state for a config; `seed` decorrelates workers' balancers.
    pub fn new(config: &Config, seed: u64, worker: &WorkerStats) -> Self {
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let stats = worker.cluster(&c.name);
                Cluster {
                    balancer: Balancer::new(c.balancer, &c.endpoints, seed.wrapping_add(i as u64)),
                    endpoints: c
                        .endpoints
                        .iter()
                        .map(|e| Endpoint {
                            address: e.address,
                            server_name: e.server_name.clone(),
                            idle: RefCell::new(Vec::new()),
                            in_flight: Cell::new(0),
                            fails: Cell::new(0),
                            down_until: Cell::new(None),
                            stats: stats.clone(),
                        })
                        .collect(),
                    config: c.clone(),
                    stats,
                }
            })
            .collect();
        Self { clusters }
    }
}

impl Cluster {
    /// Picks a usable endpoint not in `tried` (a bitmask of endpoint indexes;
    /// endpoints past 63 are never excluded, only retried less cleverly).
    pub fn pick(&self, key_hash: u64, tried: u64, now: Instant) -> Option<usize> {
        let usable = |i: usize| {
            let e = &self.endpoints[i];
            (i >= 64 || tried & (1 << i) == 0) && e.is_up(now)
        };
        self.balancer.pick(
            self.endpoints.len(),
            usable,
            |i| self.endpoints[i].in_flight.get(),
            key_hash,
        )
    }
}

impl Endpoint {
    /// In rotation (not ejected by passive health checks) at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        self.down_until.get().is_none_or(|t| now >= t)
    }

    /// A pooled connection, or `None` when the pool has none worth using.
    /// With `verify`, connections the upstream has closed (or that hold
    /// unexpected bytes) are detected with one non-blocking peek and dropped:
    /// used for requests that cannot be retried safely.
    pub fn take_idle(&self, pool: &PoolConfig, verify: bool, now: Instant) -> Option<PooledConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(conn) = idle.pop() {
            if now.saturating_duration_since(conn.idle_since) >= pool.idle_timeout {
                // The rest are older still.
                idle.clear();
                return None;
            }
            if verify && !crate::sys::socket_is_quiet(conn.stream.fd()) {
                continue;
            }
            self.stats.reused.set(self.stats.reused.get() + 1);
            return Some(conn);
        }
        None
    }

    /// Opens a new connection within `timeout`, recording health.
    ///
    /// # Errors
    /// [`ConnectError::Failed`] or [`ConnectError::TimedOut`]; both count
    /// towards ejection.
    pub async fn connect(
        &self,
        cluster: &ClusterConfig,
        timeout: std::time::Duration,
    ) -> Result<PooledConn, ConnectError> {
        let result = monoio::time::timeout(timeout, self.open(cluster)).await;
        let outcome = match result {
            Ok(Ok(stream)) => {
                self.stats.opened.set(self.stats.opened.get() + 1);
                Ok(Box::new(UpstreamConn {
                    stream,
                    buf: Vec::with_capacity(UPSTREAM_BUF),
                    requests: 0,
                    idle_since: loop_now(),
                    stats: self.stats.clone(),
                }))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::TimedOut),
        };
        match &outcome {
            Ok(_) => {
                self.fails.set(0);
            }
            Err(_) => {
                let fails = self.fails.get() + 1;
                self.fails.set(fails);
                if cluster.max_fails > 0 && fails >= cluster.max_fails {
                    self.down_until.set(Some(loop_now() + cluster.fail_timeout));
                    self.fails.set(0);
                }
            }
        }
        outcome
    }

    /// TCP connect, then the TLS handshake when the cluster has TLS.
    async fn open(&self, cluster: &ClusterConfig) -> Result<UpstreamStream, ConnectError> {
        let stream = TcpStream::connect_addr(self.address)
            .await
            .map_err(ConnectError::Failed)?;
        // Small request and response heads must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &cluster.tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        // Config validation gives every endpoint of a TLS cluster a name;
        // without one the connection fails rather than going out in clear.
        let name = self.server_name.clone().ok_or_else(|| {
            ConnectError::Tls(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no TLS server name",
            ))
        })?;
        let session = rustls::ClientConnection::new(tls.client.clone(), name)
            .map_err(|e| ConnectError::Tls(io::Error::other(e)))?;
        let mut tls = Box::new(crate::tls::TlsStream::new(stream, session));
        tls.handshake().await.map_err(ConnectError::Tls)?;
        Ok(UpstreamStream::Tls(tls))
    }

    /// Returns a connection after a complete exchange that allows reuse;
    /// it is idle from `now`.
    pub fn release(&self, mut conn: PooledConn, pool: &PoolConfig, now: Instant) {
        if conn.requests >= pool.max_requests || !conn.buf.is_empty() || !conn.stream.is_drained() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        if idle.len() >= pool.max_idle as usize {
            return;
        }
        if conn.requests == 1 {
            conn.stream.expect_reuse();
        }
        conn.idle_since = now;
        idle.push(conn);
    }

    /// Closes every idle connection (drain, reload).
    pub fn close_idle(&self) {
        self.idle.borrow_mut().clear();
    }
}

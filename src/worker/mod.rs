//! Workers: one OS thread per core, pinned, each with its own monoio runtime,
//! its own `SO_REUSEPORT` listener sockets, upstream pools and caches.
//!
//! Per-core state lives in [`WorkerCtx`] behind `Rc`/`Cell`/`RefCell`: nothing
//! in it is shared with another thread. The only cross-thread inputs are the
//! immutable `Arc<Config>` snapshot and [`Control`] messages from the control
//! thread (reload, shutdown), received off the request path.
//!
//! - `drain.rs`: graceful-shutdown signal and per-worker connection slots.
//! - `buffers.rs`: the pool idle keep-alive connections park their buffers in.
//! - `idle_timers.rs`: the keep-alive deadlines of parked connections.
//! - `stage_slots.rs`: the slots a connection's request stages run in, so
//!   an idle connection's task stays small.

pub(crate) mod buffers;
mod contain;
mod drain;
mod idle_timers;
mod stage_slots;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use monoio::net::TcpListener;
use monoio::time::{loop_now, Instant};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

pub use buffers::BufferPool;
pub use contain::Contained;
pub use drain::{ConnSlots, Drain, DrainGuard};
pub use idle_timers::IdleTimers;
pub use stage_slots::StageSlots;

use crate::config::{Config, DriverChoice, ListenerConfig};
use crate::http::conn::serve;
use crate::http::response::RequestIds;
use crate::observability::access_log::Clock;
use crate::observability::log_stream::{LogKind, Sink};
use crate::observability::metrics::{
    EndpointReport, RouteStats, WorkerReport, WorkerStats, UNMATCHED,
};
use crate::observability::trace_context::TraceIds;
use crate::observability::Logs;
use crate::ratelimit::throttle::Gate;
use crate::upstream::Upstreams;

/// What a worker serves from: the config and the state built for it.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Unique to this snapshot among all of the process's: what was
    /// rendered from one config is told apart from another's by it (an
    /// address could be reused by a later config).
    pub serial: u64,
    pub upstreams: Upstreams,
    /// Counters of each route, indexed by `Route::order`.
    pub route_stats: Box<[Rc<RouteStats>]>,
    /// Concurrency gates of capped routes, indexed by `Route::order`.
    pub route_gates: Box<[Option<Rc<Gate>>]>,
}

/// Gates by route name: in-flight counts survive reloads.
type Gates = RefCell<std::collections::BTreeMap<Box<str>, Rc<Gate>>>;

impl Snapshot {
    fn new(config: Arc<Config>, id: usize, stats: &WorkerStats, gates: &Gates) -> Self {
        let upstreams = Upstreams::new(&config, id as u64, stats);
        let routes = config.router.routes();
        let route_stats = routes.iter().map(|r| stats.route(&r.name)).collect();
        let route_gates = routes
            .iter()
            .map(|r| {
                r.concurrency.map(|_| {
                    gates
                        .borrow_mut()
                        .entry(r.name.clone())
                        .or_default()
                        .clone()
                })
            })
            .collect();
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            config,
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            upstreams,
            route_stats,
            route_gates,
        }
    }
}

/// Everything one worker owns.
pub struct WorkerCtx {
    pub id: usize,
    snapshot: RefCell<Rc<Snapshot>>,
    pub request_ids: RequestIds,
    pub trace_ids: TraceIds,
    pub drain: Drain,
    /// All connections of this worker (drain waits for zero).
    pub conns: ConnSlots,
    /// This worker's counters; the admin thread gets copies on request.
    pub stats: WorkerStats,
    /// Requests refused before a route matched.
    pub unmatched: Rc<RouteStats>,
    /// This worker's batch of access-log lines; `None` when logging is off.
    pub access_log: RefCell<Option<Sink>>,
    /// This worker's audit events (IP denials, refused CORS preflights).
    pub audit_log: RefCell<Option<Sink>>,
    pub clock: Clock,
    /// This worker's rate-limit table and pending admissions.
    pub limiter: crate::ratelimit::Limiter,
    /// Verified-token cache and its counters.
    pub auth: crate::auth::AuthState,
    /// TLS handshakes completed / failed or timed out.
    pub tls_handshakes: std::cell::Cell<u64>,
    pub tls_failures: std::cell::Cell<u64>,
    /// Connections ended by a panic in their task (see [`Contained`]).
    pub panics: Rc<std::cell::Cell<u64>>,
    /// Downstream connection buffers, shared by this worker's connections.
    pub buffers: BufferPool,
    /// Idle keep-alive connections return their buffers to `buffers`
    /// (io_uring only: on epoll a buffer-less wait costs a poll(2) per
    /// request).
    pub park_idle: bool,
    /// Keep-alive deadlines of parked connections.
    pub idle_timers: IdleTimers,
    /// Slots the connections' request stages run in.
    pub stage_slots: StageSlots,
    /// The other workers and the cluster store, for rate-limit
    /// reconciliation.
    peers: RefCell<Peers>,
    /// Origin of the rate limiter's nanosecond clock.
    epoch: Instant,
    gates: Gates,
}

impl WorkerCtx {
    pub fn new(id: usize, config: Arc<Config>, logs: &Logs, driver: Driver) -> Self {
        let stats = WorkerStats::default();
        let gates = Gates::default();
        let snapshot = Snapshot::new(config.clone(), id, &stats, &gates);
        let request_ids = RequestIds::new(id);
        let trace_seed = crate::upstream::balancer::hash(request_ids.generate().as_bytes());
        let access_log = logs
            .access
            .as_ref()
            .and_then(|w| w.sink(LogKind::Access, config.access_log.batch_bytes));
        // Audit events are rare: a small batch, flushed by the same tick.
        let audit_log = logs
            .audit
            .as_ref()
            .and_then(|w| w.sink(LogKind::Audit, 4096));
        Self {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            request_ids,
            trace_ids: TraceIds::new(trace_seed),
            drain: Drain::default(),
            conns: ConnSlots::default(),
            unmatched: stats.route(UNMATCHED),
            stats,
            access_log: RefCell::new(access_log),
            audit_log: RefCell::new(audit_log),
            clock: Clock::default(),
            limiter: crate::ratelimit::Limiter::new(
                config.rate_limit.table_size,
                config.workers > 1 || config.rate_limit.redis.is_some(),
            ),
            peers: RefCell::new(Peers::default()),
            auth: crate::auth::AuthState::new(config.auth.cache_entries, trace_seed),
            tls_handshakes: std::cell::Cell::new(0),
            tls_failures: std::cell::Cell::new(0),
            panics: Rc::default(),
            buffers: BufferPool::default(),
            park_idle: matches!(driver, Driver::IoUring { .. }),
            idle_timers: IdleTimers::default(),
            stage_slots: StageSlots::default(),
            epoch: Instant::now(),
            gates,
        }
    }

    /// Nanoseconds since this worker started (the rate limiter's clock).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The current snapshot; requests hold it from head to end of response.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Installs a new config. In-flight requests finish on the old snapshot,
    /// whose pools close when the last of them is done.
    pub fn install(&self, config: Arc<Config>) {
        let snapshot = Snapshot::new(config, self.id, &self.stats, &self.gates);
        *self.snapshot.borrow_mut() = Rc::new(snapshot);
    }

    /// A copy of this worker's counters for the admin thread.
    fn report(&self, driver: Driver) -> WorkerReport {
        let (routes, clusters) = self.stats.report();
        let snap = self.snapshot();
        let now = Instant::now();
        let endpoints = snap
            .upstreams
            .clusters
            .iter()
            .flat_map(|c| {
                let name: Arc<str> = c.config.name.as_str().into();
                c.endpoints.iter().map(move |e| EndpointReport {
                    cluster: name.clone(),
                    address: e.address,
                    healthy: e.is_up(now),
                })
            })
            .collect();
        let gates = snap
            .config
            .router
            .routes()
            .iter()
            .zip(snap.route_gates.iter())
            .filter_map(|(r, g)| {
                g.as_ref().map(|g| {
                    (
                        Arc::from(&*r.name),
                        u64::from(g.in_flight()),
                        g.queued() as u64,
                    )
                })
            })
            .collect();
        WorkerReport {
            gates,
            worker: self.id,
            driver: driver.name(),
            connections: self.conns.active() as u64,
            idle_connections: self.buffers.parked(),
            held_connections: self.buffers.held(),
            wait_batching: monoio::utils::uring_wait_batching().unwrap_or(false),
            requests: self.stats.requests.get(),
            rate_sync_received: self.limiter.received.get(),
            auth_cache: (self.auth.hits.get(), self.auth.misses.get()),
            tls_handshakes: (self.tls_handshakes.get(), self.tls_failures.get()),
            connection_panics: self.panics.get(),
            routes,
            clusters,
            endpoints,
        }
    }
}

/// Messages from the control and admin threads.
pub enum Control {
    /// Serve this snapshot from now on, then acknowledge.
    Reload(Arc<Config>, std::sync::mpsc::SyncSender<()>),
    /// Answer with a copy of this worker's counters (a metrics scrape).
    Collect(async_channel::Sender<WorkerReport>),
    /// Where to report rate-limit admissions (sent once, after start).
    Peers(Peers),
    /// Requests another worker admitted under rate-limit policies.
    RateDeltas(crate::ratelimit::Deltas),
    /// Other instances' admissions, from the cluster store.
    RateAhead(Arc<Vec<(u64, u64)>>),
    /// Refuse rate-limited requests (cluster store down, failing closed).
    RateRefuse(bool),
    /// An issuer's signing keys, fetched anew.
    AuthKeys(Box<str>, Arc<crate::auth::jwt::KeySet>),
    Shutdown,
}

/// Who hears about a worker's rate-limit admissions.
#[derive(Default)]
pub struct Peers {
    pub workers: Vec<async_channel::Sender<Control>>,
    /// The cluster store's sync thread, in cluster mode.
    pub store: Option<std::sync::mpsc::SyncSender<crate::ratelimit::Deltas>>,
    /// The signing-key fetch thread, for refetches on unknown `kid`s.
    pub jwks: Option<std::sync::mpsc::SyncSender<crate::auth::jwks::FetchMsg>>,
    /// The token introspection pool's queue.
    pub introspect: Option<async_channel::Sender<crate::auth::introspect::Job>>,
}

/// The event loop a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `deferred`: completion work waits for the worker to ask for it
    /// (see `uring_runtime`); `wait_batch`: the most completions one wait
    /// collects (1: waits return at the first; see `batch_waits`).
    IoUring {
        deferred: bool,
        wait_batch: u32,
    },
    Epoll,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring { .. } => "io_uring",
            Driver::Epoll => "epoll",
        }
    }

    /// When io_uring completion work runs: `deferred` (when the worker
    /// waits), `interrupt` (as data arrives), or `none` (epoll).
    pub fn completions(self) -> &'static str {
        match self {
            Driver::IoUring { deferred: true, .. } => "deferred",
            Driver::IoUring {
                deferred: false, ..
            } => "interrupt",
            Driver::Epoll => "none",
        }
    }

    /// The most completions one wait collects: 1 on epoll or unbatched.
    pub fn wait_batch(self) -> u32 {
        match self {
            Driver::IoUring { wait_batch, .. } => wait_batch,
            Driver::Epoll => 1,
        }
    }
}

/// One listener socket of one worker.
pub struct BoundListener {
    pub config: ListenerConfig,
    pub socket: std::net::TcpListener,
}

/// Binds `workers` sockets per configured listener with `SO_REUSEPORT`. The
/// first socket resolves port 0, the rest bind the port it got, so every
/// worker accepts on the same address. Returns `[worker][listener]` and the
/// bound address of each listener.
///
/// # Errors
/// The bind error, naming the listener.
pub fn bind_listeners(config: &Config) -> io::Result<(Vec<Vec<BoundListener>>, Vec<SocketAddr>)> {
    let mut per_worker: Vec<Vec<BoundListener>> = (0..config.workers).map(|_| Vec::new()).collect();
    let mut addresses = Vec::new();
    for l in &config.listeners {
        let mut address = l.address;
        for sockets in per_worker.iter_mut() {
            let socket = bind_one(address, l.backlog).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener {:?} cannot bind {}: {e}", l.name, l.address),
                )
            })?;
            address = socket.local_addr()?;
            sockets.push(BoundListener {
                config: l.clone(),
                socket,
            });
        }
        addresses.push(address);
    }
    Ok((per_worker, addresses))
}

fn bind_one(address: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit it: small heads must not wait for Nagle.
    socket.set_tcp_nodelay(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// A started worker.
pub struct WorkerHandle {
    pub thread: JoinHandle<()>,
    pub control: async_channel::Sender<Control>,
}

/// Starts worker `id` on its own thread. `started` receives the driver it
/// runs on, or the error that stopped it from starting.
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn(
    id: usize,
    config: Arc<Config>,
    listeners: Vec<BoundListener>,
    core: Option<core_affinity::CoreId>,
    allocations: &'static crate::sys::AllocCounter,
    logs: Arc<Logs>,
    started: mpsc::Sender<Result<Driver, String>>,
) -> io::Result<WorkerHandle> {
    let (tx, rx) = async_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name(format!("ringgate-w{id}"))
        .spawn(move || {
            crate::sys::count_allocations_into(allocations);
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        worker = id,
                        core = core.id,
                        "could not pin worker to its core"
                    );
                }
            }
            let driver = config.driver;
            let entries = config.io_uring_entries;
            let defer = config.io_uring_defer_taskrun;
            let run = |d: Driver| {
                let ctx = Rc::new(WorkerCtx::new(id, config.clone(), &logs, d));
                run(ctx, listeners, rx, started.clone(), d)
            };
            let uring = match driver {
                DriverChoice::Epoll => None,
                DriverChoice::IoUring => Some(uring_runtime(id, entries, defer)),
                // Probe first: some kernels and sandboxes refuse io_uring.
                DriverChoice::Auto => monoio::utils::detect_uring()
                    .then(|| uring_runtime(id, entries, defer))
                    .filter(Result::is_ok),
            };
            let result = match uring {
                Some(Ok((mut rt, deferred))) => {
                    let wait_batch = batch_waits(id, &rt, &config);
                    rt.block_on(run(Driver::IoUring {
                        deferred,
                        wait_batch,
                    }));
                    Ok(())
                }
                Some(Err(e)) => Err(e),
                None => {
                    if driver == DriverChoice::Auto && id == 0 {
                        tracing::warn!(
                            "io_uring is not available here; workers use the epoll driver"
                        );
                    }
                    legacy_runtime().map(|mut rt| rt.block_on(run(Driver::Epoll)))
                }
            };
            if let Err(e) = result {
                let _ = started.send(Err(format!("worker {id}: cannot start its runtime: {e}")));
            }
        })?;
    Ok(WorkerHandle {
        thread,
        control: tx,
    })
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>;

/// The worker's ring. With `defer`, completion work (the retried receive
/// once data arrives, the posting of its completion) runs only when the
/// worker enters the kernel to wait for completions, which it does anyway
/// once its ready tasks have run, instead of interrupting the worker with an
/// inter-processor interrupt whenever data arrives from another core
/// (`IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`, Linux 6.1).
/// The ring is built on the worker's own thread, which is its only
/// submitter. A kernel that refuses the flags gets a plain ring.
pub(crate) fn uring_runtime(
    id: usize,
    entries: u32,
    defer: bool,
) -> io::Result<(UringRuntime, bool)> {
    let build = |urb: io_uring::Builder| {
        RuntimeBuilder::<IoUringDriver>::new()
            .uring_builder(urb)
            .with_entries(entries)
            .enable_timer()
            .build()
    };
    if defer {
        let mut urb = io_uring::IoUring::builder();
        urb.setup_single_issuer().setup_defer_taskrun();
        match build(urb) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if id == 0 {
                    tracing::info!(
                        "this kernel has no deferred io_uring task running (Linux 6.1+); completions interrupt the workers"
                    );
                }
            }
            built => return built.map(|rt| (rt, true)),
        }
    }
    build(io_uring::IoUring::builder()).map(|rt| (rt, false))
}

/// Lets each wait of the worker's ring collect several completions, up to
/// `io_uring_wait_batch`, holding one no longer than
/// `io_uring_wait_batch_us` for the others (the kernel's minimum wait
/// time, Linux 6.12; how many a wait asks for adapts, see
/// `monoio::WaitBatch`), while the worker's CPU time is at least
/// `io_uring_wait_batch_busy_percent` of wall time. A busy worker then
/// handles a batch per wake-up instead of sleeping and being woken for
/// nearly every completion; one with CPU to spare answers each completion
/// at once. Returns the batch in force (1 when off or unsupported).
fn batch_waits(id: usize, rt: &UringRuntime, config: &Config) -> u32 {
    let max = config.io_uring_wait_batch;
    if max <= 1 {
        return 1;
    }
    let batch = monoio::WaitBatch {
        max,
        wait: std::time::Duration::from_micros(config.io_uring_wait_batch_us.into()),
        busy_percent: config.io_uring_wait_batch_busy_percent,
    };
    if rt.set_wait_batch(batch) {
        return max;
    }
    if id == 0 {
        tracing::info!(
            "this kernel has no minimum io_uring wait time (Linux 6.12+); workers wake for each completion"
        );
    }
    1
}

fn legacy_runtime() -> io::Result<monoio::Runtime<monoio::time::TimeDriver<LegacyDriver>>> {
    RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()
}

/// Runs `fut` on a fresh epoll runtime with timers (unit tests).
#[cfg(test)]
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    legacy_runtime().expect("runtime").block_on(fut)
}

/// The worker's main task: accept loops, control messages, drain.
async fn run(
    ctx: Rc<WorkerCtx>,
    listeners: Vec<BoundListener>,
    control: async_channel::Receiver<Control>,
    started: mpsc::Sender<Result<Driver, String>>,
    driver: Driver,
) {
    let id = ctx.id;
    for (index, l) in listeners.into_iter().enumerate() {
        let listener = match TcpListener::from_std(l.socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = started.send(Err(format!(
                    "worker {id}: listener {:?}: {e}",
                    l.config.name
                )));
                return;
            }
        };
        monoio::spawn(accept_loop(
            ctx.clone(),
            listener,
            index,
            l.config.max_connections as usize,
            l.config.proxy_protocol,
        ));
    }
    if ctx.access_log.borrow().is_some() || ctx.audit_log.borrow().is_some() {
        monoio::spawn(flush_logs(ctx.clone()));
    }
    if ctx.park_idle {
        monoio::spawn(sweep_idle(ctx.clone()));
    }
    let _ = started.send(Ok(driver));

    loop {
        match control.recv().await {
            Ok(Control::Reload(config, installed)) => {
                ctx.install(config);
                let _ = installed.try_send(());
            }
            Ok(Control::Collect(reply)) => {
                let _ = reply.try_send(ctx.report(driver));
            }
            Ok(Control::Peers(mut peers)) => {
                if let Some(jwks) = peers.jwks.take() {
                    ctx.auth.set_refetch(jwks);
                }
                if let Some(jobs) = peers.introspect.take() {
                    ctx.auth.set_introspector(jobs);
                }
                let share = !peers.workers.is_empty() || peers.store.is_some();
                *ctx.peers.borrow_mut() = peers;
                if share {
                    monoio::spawn(share_rate_limits(ctx.clone()));
                }
            }
            Ok(Control::AuthKeys(issuer, keys)) => ctx.auth.set_keys(&issuer, keys),
            Ok(Control::RateDeltas(deltas)) => ctx.limiter.apply(&deltas, ctx.now_ns()),
            Ok(Control::RateAhead(ahead)) => ctx.limiter.raise(&ahead, ctx.now_ns()),
            Ok(Control::RateRefuse(refuse)) => ctx.limiter.set_refusing(refuse),
            Ok(Control::Shutdown) | Err(_) => break,
        }
    }
    let drain_timeout = ctx.snapshot().config.drain_timeout;

    // Drain: stop accepting, close idle connections, let requests finish.
    ctx.drain.start();
    let idle_pools = ctx.snapshot();
    for cluster in idle_pools.upstreams.clusters.iter() {
        cluster.endpoints.iter().for_each(|e| e.close_idle());
    }
    drop(idle_pools);
    let finished = monoio::time::timeout(drain_timeout, ctx.conns.below(1)).await;
    if finished.is_err() {
        tracing::warn!(
            worker = id,
            open = ctx.conns.active(),
            "drain timeout passed; closing remaining connections"
        );
    }
    // Hands the last lines to the writer.
    ctx.access_log.borrow_mut().take();
    ctx.audit_log.borrow_mut().take();
}

/// Sends this worker's rate-limit admissions to the other workers and the
/// cluster store every `rate_limit.sync_interval`.
async fn share_rate_limits(ctx: Rc<WorkerCtx>) {
    let drain = ctx.drain.register();
    loop {
        let interval = ctx.snapshot().config.rate_limit.sync_interval;
        monoio::select! {
            _ = monoio::time::sleep(interval) => {}
            _ = drain.wait() => return,
        }
        if let Some(deltas) = ctx.limiter.take_deltas() {
            let peers = ctx.peers.borrow();
            for peer in peers.workers.iter() {
                let _ = peer.try_send(Control::RateDeltas(deltas.clone()));
            }
            // Never waits: a full queue means the sync thread is stuck on
            // the store, and these admissions stay enforced locally.
            if let Some(store) = &peers.store {
                let _ = store.try_send(deltas);
            }
        }
    }
}

/// Closes parked keep-alive connections past their idle deadline, until
/// the worker drains (which closes them anyway).
async fn sweep_idle(ctx: Rc<WorkerCtx>) {
    let drain = ctx.drain.register();
    ctx.idle_timers.sweep(drain.wait()).await;
}

/// Hands partly filled log batches to the writer at the configured
/// interval, so lines of a quiet worker still appear promptly.
async fn flush_logs(ctx: Rc<WorkerCtx>) {
    let drain = ctx.drain.register();
    loop {
        let interval = ctx.snapshot().config.access_log.flush_interval;
        monoio::select! {
            _ = monoio::time::sleep(interval) => {}
            _ = drain.wait() => return,
        }
        for log in [&ctx.access_log, &ctx.audit_log] {
            if let Some(sink) = log.borrow_mut().as_mut() {
                sink.flush();
            }
        }
    }
}

/// Completes a TLS handshake within the listener's timeout (a PROXY
/// protocol header first, when the listener expects one), then serves the
/// connection; a failed or slow handshake closes it (counted).
async fn serve_tls(
    mut conn: Accepted,
    mut stream: monoio::net::TcpStream,
    tls: Arc<crate::tls::TlsListener>,
) {
    let ctx = conn.ctx.clone();
    let session = match rustls::server::UnbufferedServerConnection::new(tls.server.clone()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let deadline = conn.at + tls.handshake_timeout;
    let mut received = ctx.buffers.take_record();
    if conn.proxy_protocol {
        use crate::security::proxy_protocol::read_header;
        let Some((len, source)) = read_header(&mut stream, &mut received, deadline).await else {
            ctx.tls_failures.set(ctx.tls_failures.get() + 1);
            return;
        };
        received.drain(..len);
        conn.peer = source.unwrap_or(conn.peer);
        conn.proxy_protocol = false;
    }
    let mut stream = crate::tls::ServerStream::with_received(stream, session, received);
    let wait = deadline.saturating_duration_since(Instant::now());
    let done = monoio::time::timeout(wait, stream.handshake()).await;
    if !matches!(done, Ok(Ok(()))) {
        ctx.tls_failures.set(ctx.tls_failures.get() + 1);
        return;
    }
    ctx.tls_handshakes.set(ctx.tls_handshakes.get() + 1);
    // The client certificate is parsed once, for the connection's life.
    let client_principal = stream
        .session()
        .peer_certificates()
        .and_then(<[_]>::first)
        .and_then(|c| crate::tls::client_principal(c))
        .map(Rc::new);
    let mut client_cert = Vec::new();
    if let Some(cert) = &client_principal {
        crate::tls::render_client_cert(&tls.forward, cert, &mut client_cert);
    }
    let secure = crate::http::conn::Secure {
        listener: Some(tls),
        client_cert,
        client_principal,
    };
    serve(conn, stream, secure).await;
}

/// An accepted connection: its worker, where it came from, and its place
/// in the worker's and the listener's connection counts, freed when the
/// connection's task drops it.
pub struct Accepted {
    pub ctx: Rc<WorkerCtx>,
    slots: Rc<ConnSlots>,
    pub peer: SocketAddr,
    /// Index of the listener in the config.
    pub listener: usize,
    pub at: Instant,
    /// A PROXY protocol header is expected first.
    pub proxy_protocol: bool,
}

impl Drop for Accepted {
    fn drop(&mut self) {
        self.slots.release();
        self.ctx.conns.release();
    }
}

/// Accepts connections on one listener while the worker has slots for them.
async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    index: usize,
    max_connections: usize,
    proxy_protocol: bool,
) {
    let slots = Rc::new(ConnSlots::default());
    let drain = ctx.drain.register();
    loop {
        // At the limit, stop accepting: new connections wait in the backlog.
        monoio::select! {
            _ = slots.below(max_connections) => {}
            _ = drain.wait() => return,
        }
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = drain.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let accepted_at = loop_now();
                slots.acquire();
                ctx.conns.acquire();
                // TLS settings of the config current at accept time: a
                // reload changes them for new connections only.
                let tls = ctx
                    .snapshot()
                    .config
                    .listeners
                    .get(index)
                    .and_then(|l| l.tls.clone());
                let conn = Accepted {
                    ctx: ctx.clone(),
                    slots: slots.clone(),
                    peer,
                    listener: index,
                    at: accepted_at,
                    proxy_protocol,
                };
                // The connection's future is the task itself, behind a
                // panic boundary of its own size plus a pointer, and plain
                // connections' tasks are not sized for a TLS session.
                let panics = ctx.panics.clone();
                match tls {
                    None => {
                        let plain = crate::http::conn::Secure::default();
                        monoio::spawn(Contained::new(serve(conn, stream, plain), panics));
                    }
                    Some(tls) => {
                        monoio::spawn(Contained::new(serve_tls(conn, stream, tls), panics));
                    }
                }
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(worker = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream as StdUnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use monoio::io::AsyncReadRent;
    use monoio::net::UnixStream;

    use super::uring_runtime;

    /// Linux 6.12 added the minimum wait time batched waits rely on.
    fn kernel_has_min_wait() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>());
        matches!((parts.next(), parts.next()), (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= (6, 12))
    }

    /// Every reading of the loop's time within one turn of the loop is the
    /// same, however long the turn's work takes; after a wait it is the
    /// time of the wake-up; outside a running loop it is the clock's.
    #[test]
    fn the_loop_time_is_read_once_per_wake_up() {
        use monoio::time::loop_now;
        let (mut rt, _) = uring_runtime(0, 256, true).expect("io_uring runtime");
        rt.block_on(async {
            monoio::time::sleep(Duration::from_millis(1)).await;
            let woke = loop_now();
            let busy = std::time::Instant::now();
            while busy.elapsed() < Duration::from_millis(20) {}
            assert_eq!(loop_now(), woke, "the clock was read again within a turn");
            let before = std::time::Instant::now();
            monoio::time::sleep(Duration::from_millis(20)).await;
            let after = loop_now().into_std();
            assert!(
                after >= before + Duration::from_millis(20),
                "not the wake-up time"
            );
            assert!(after <= std::time::Instant::now());
        });
        let stopped = loop_now();
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(1) {}
        assert!(loop_now() > stopped, "a stopped loop's time outlived it");
    }

    /// An io_uring runtime whose waits collect up to two completions,
    /// holding one up to `wait`, gated at `busy_percent`; `None` (after
    /// checking the runtime says so) on kernels without minimum wait times.
    fn batched_runtime(wait: Duration, busy_percent: u32) -> Option<super::UringRuntime> {
        let (rt, _) = uring_runtime(0, 256, true).expect("io_uring runtime");
        let batch = monoio::WaitBatch {
            max: 2,
            wait,
            busy_percent,
        };
        assert_eq!(rt.set_wait_batch(batch), kernel_has_min_wait());
        kernel_has_min_wait().then_some(rt)
    }

    /// Once a wait has collected more completions than it asked for, the
    /// next asks for more (here the most, two): a read whose data is there
    /// does not finish until the second read's data arrives 200 ms later
    /// (well inside the 30 s batch time). With waits that return at the
    /// first completion it would finish at once, before the second peer
    /// writes.
    #[test]
    fn a_batched_wait_holds_a_completion_for_the_next() {
        let Some(mut rt) = batched_runtime(Duration::from_secs(30), 0) else {
            return;
        };
        rt.block_on(async {
            assert!(
                a_wait_holds_a_completion().await,
                "a's read finished before b's data was written: the wait was not batched"
            );
        });
    }

    /// With `busy_percent`, waits batch only while the thread spends that
    /// share of its time on the CPU: not on a fresh, idle runtime; after
    /// 600 turns that each spin for 200 µs (two load windows at nearly
    /// 100%), yes; after 600 turns that each sleep 1 ms (nearly 0%), no
    /// more. Each check is the hold of `a_wait_holds_a_completion`.
    #[test]
    fn waits_batch_only_while_the_thread_is_busy() {
        let Some(mut rt) = batched_runtime(Duration::from_secs(10), 30) else {
            return;
        };
        rt.block_on(async {
            assert!(!a_wait_holds_a_completion().await, "idle, yet held");
            // Busy: each turn spins, then parks for a read whose data is
            // already there.
            let (s, mut peer) = StdUnixStream::pair().unwrap();
            s.set_nonblocking(true).unwrap();
            let mut s = UnixStream::from_std(s).unwrap();
            let mut buf = vec![0u8; 8];
            for _ in 0..600 {
                let spin = std::time::Instant::now();
                while spin.elapsed() < Duration::from_micros(200) {}
                peer.write_all(b"x").unwrap();
                let (n, b) = s.read(buf).await;
                assert_eq!(n.unwrap(), 1);
                buf = b;
            }
            assert!(a_wait_holds_a_completion().await, "busy, yet not held");
            for _ in 0..600 {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(!a_wait_holds_a_completion().await, "idle again, yet held");
        });
    }

    /// Two reads complete in one wait (so a batched wait asks for two
    /// next); then one read's data is written at once and the other's
    /// 200 ms later. Returns whether the first read finished only after
    /// the second's data was written: whether its wait was held.
    async fn a_wait_holds_a_completion() -> bool {
        let (a, mut a_peer) = StdUnixStream::pair().unwrap();
        let (b, mut b_peer) = StdUnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut a = UnixStream::from_std(a).unwrap();
        let mut b = UnixStream::from_std(b).unwrap();
        a_peer.write_all(b"1").unwrap();
        b_peer.write_all(b"1").unwrap();
        let (ra, rb) = monoio::join!(a.read(vec![0u8; 8]), b.read(vec![0u8; 8]));
        assert_eq!((ra.0.unwrap(), rb.0.unwrap()), (1, 1));
        let b_written = Arc::new(AtomicBool::new(false));
        let flag = b_written.clone();
        let writer = std::thread::spawn(move || {
            a_peer.write_all(b"2").unwrap();
            std::thread::sleep(Duration::from_millis(200));
            flag.store(true, Ordering::SeqCst);
            b_peer.write_all(b"2").unwrap();
        });
        let read_a = async {
            let (n, _) = a.read(vec![0u8; 8]).await;
            assert_eq!(n.unwrap(), 1);
            b_written.load(Ordering::SeqCst)
        };
        let (held, rb) = monoio::join!(read_a, b.read(vec![0u8; 8]));
        assert_eq!(rb.0.unwrap(), 1);
        writer.join().unwrap();
        held
    }

    /// A worker context for `config` on the running io_uring runtime and
    /// one client connection to it, served as the worker serves the
    /// connections it accepts. The logs must outlive the context.
    fn serve_one_client(
        config: &str,
        deferred: bool,
    ) -> (
        std::rc::Rc<super::WorkerCtx>,
        crate::observability::Logs,
        std::net::TcpStream,
        monoio::task::JoinHandle<()>,
    ) {
        use std::rc::Rc;

        let config = Arc::new(crate::config::Config::parse("test.toml", config).expect("config"));
        let logs = crate::observability::Logs::start(&config).expect("logs");
        let driver = super::Driver::IoUring {
            deferred,
            wait_batch: 1,
        };
        let ctx = Rc::new(super::WorkerCtx::new(0, config, &logs, driver));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let stream = monoio::net::TcpStream::from_std(server).unwrap();
        let slots = Rc::new(super::ConnSlots::default());
        slots.acquire();
        ctx.conns.acquire();
        let conn = super::Accepted {
            ctx: ctx.clone(),
            slots,
            peer,
            listener: 0,
            at: monoio::time::loop_now(),
            proxy_protocol: false,
        };
        let secure = crate::http::conn::Secure::default();
        let served = monoio::spawn(crate::http::conn::serve(conn, stream, secure));
        (ctx, logs, client, served)
    }

    /// What another thread sends on `rx`, waited for without blocking the
    /// runtime (so the loop keeps submitting), for up to 20 s.
    async fn recv_within<T>(rx: &std::sync::mpsc::Receiver<T>, what: &str) -> T {
        for _ in 0..4_000 {
            if let Ok(got) = rx.try_recv() {
                return got;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}");
    }

    /// Reads one response with the body "ok" from a test client.
    fn read_response_ok(client: &mut std::net::TcpStream) -> Vec<u8> {
        use std::io::Read;

        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// A small keep-alive response leaves with the read held for the
    /// connection's next request (`http::conn::send_last`), in one
    /// submission that completes once: a request answered on a kept-alive
    /// connection costs the worker one io_uring completion, not one for
    /// its response's send and one for the next request's read.
    #[test]
    fn a_small_response_leaves_with_the_next_read() {
        const REQUESTS: u64 = 64;
        let (mut rt, deferred) = uring_runtime(0, 256, true).expect("io_uring runtime");
        rt.block_on(async move {
            let (_ctx, _logs, mut client, served) = serve_one_client(
                "[[listeners]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n\
                 [[routes]]\nname = \"r\"\nrespond = { status = 200, body = \"ok\" }\n",
                deferred,
            );

            // One request first, so the counting starts on a kept-alive
            // connection; then the rest, each sent once the last response
            // is read; then the close.
            let (go, ready) = std::sync::mpsc::channel::<()>();
            let done = Arc::new(AtomicBool::new(false));
            let finished = done.clone();
            let peer = std::thread::spawn(move || {
                let exchange = |client: &mut std::net::TcpStream| {
                    client
                        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
                        .unwrap();
                    read_response_ok(client);
                };
                exchange(&mut client);
                finished.store(true, Ordering::SeqCst);
                ready.recv().unwrap();
                for _ in 0..REQUESTS {
                    exchange(&mut client);
                }
                finished.store(true, Ordering::SeqCst);
            });
            let wait = |flag: Arc<AtomicBool>| async move {
                for _ in 0..2_000 {
                    if flag.swap(false, Ordering::SeqCst) {
                        return;
                    }
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("the client did not finish");
            };
            wait(done.clone()).await;
            let before = monoio::utils::uring_completions().expect("an io_uring runtime");
            go.send(()).unwrap();
            wait(done.clone()).await;
            let completions = monoio::utils::uring_completions().unwrap() - before;
            peer.join().unwrap();
            drop(served);
            // One per request, and a little for the loop's own waits.
            assert!(
                completions < REQUESTS * 3 / 2,
                "{completions} completions for {REQUESTS} requests"
            );
        });
    }

    /// A kept-alive client connection and a pooled upstream connection
    /// enter the ring's registered files once each has carried a request
    /// and stays for more (`http::io::Stream::expect_reuse`), and leave it
    /// when they close: the client then sees the gateway's close, which a
    /// slot left filled would hold back (the table keeps the socket open).
    #[test]
    fn reused_connections_are_registered_files_until_they_close() {
        use std::io::{BufRead, BufReader, Read};

        let (mut rt, deferred) = uring_runtime(0, 256, true).expect("io_uring runtime");
        rt.block_on(async move {
            // An origin that answers every request on one connection.
            let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let origin_addr = origin.local_addr().unwrap();
            let (closed, upstream_closed) = std::sync::mpsc::channel::<()>();
            let upstream = std::thread::spawn(move || {
                let (conn, _) = origin.accept().unwrap();
                // The gateway's close ends the loop; a timeout fails the test.
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        closed.send(()).unwrap();
                        return;
                    }
                    if line == "\r\n" {
                        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .unwrap();
                    }
                }
            });
            let (ctx, _logs, mut client, served) = serve_one_client(
                &format!(
                    "[[listeners]]\nname = \"t\"\naddress = \"127.0.0.1:0\"\n\
                     [[clusters]]\nname = \"c\"\nendpoints = [\"{origin_addr}\"]\n\
                     [[routes]]\nname = \"r\"\nproxy = {{ cluster = \"c\" }}\n"
                ),
                deferred,
            );
            client
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();

            // Each step: the client's request, then the registered files
            // the worker has once its response is read.
            let (step, steps) = std::sync::mpsc::channel::<Option<&'static str>>();
            let (done, finished) = std::sync::mpsc::channel::<Vec<u8>>();
            let peer = std::thread::spawn(move || {
                while let Ok(Some(request)) = steps.recv() {
                    client.write_all(request.as_bytes()).unwrap();
                    done.send(read_response_ok(&mut client)).unwrap();
                }
                // The gateway's close, seen as the end of the stream (a
                // read timeout fails the test).
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).unwrap();
                done.send(rest).unwrap();
            });
            let response = || recv_within(&finished, "the client did not finish");
            let registered = || monoio::utils::uring_registered_files().expect("io_uring");
            let before = registered();

            step.send(Some("GET /a HTTP/1.1\r\nhost: t\r\n\r\n"))
                .unwrap();
            response().await;
            // Both connections entered the table when their first exchange
            // ended and they stayed, which the second request comes after.
            step.send(Some("GET /b HTTP/1.1\r\nhost: t\r\n\r\n"))
                .unwrap();
            response().await;
            assert_eq!(registered() - before, 2, "after the second request");
            step.send(Some(
                "GET /c HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
            ))
            .unwrap();
            response().await;
            step.send(None).unwrap();
            assert!(response().await.is_empty(), "bytes after the last response");
            served.await;
            assert_eq!(registered() - before, 1, "the client's slot was emptied");
            let snap = ctx.snapshot();
            for cluster in snap.upstreams.clusters.iter() {
                cluster.endpoints.iter().for_each(|e| e.close_idle());
            }
            assert_eq!(registered(), before, "the upstream's slot was emptied");
            // The origin sees the close once the loop submits it.
            recv_within(&upstream_closed, "the origin did not see the close").await;
            peer.join().unwrap();
            upstream.join().unwrap();
        });
    }
}

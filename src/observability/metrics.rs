//! Metric names, the per-worker counters behind them, and the Prometheus
//! rendering the admin listener serves at `GET /metrics`.
//!
//! Workers count into plain `Cell`s of their own ([`WorkerStats`]): nothing
//! on the request path touches memory another core writes, and nothing is
//! locked. When Prometheus scrapes, the admin thread sends every worker a
//! per-core message and each answers with a [`WorkerReport`] (a copy of its
//! counters and latency histograms). The admin thread sums the reports and
//! renders them: counters and gauges through the `metrics` facade into a
//! `metrics-exporter-prometheus` recorder of its own, histograms straight
//! from the merged `hdrhistogram` recordings (the exporter's histograms take
//! one sample per call; the workers already hold exact per-bucket counts).
//!
//! Label values are bounded by the configuration: routes and clusters by
//! their configured names, endpoints by their configured addresses, workers
//! by index. Never a raw path, a client address or a credential.
//!
//! # Adding a metric
//! 1. Add a `pub const` name with a one-line doc to [`names`] (Prometheus
//!    conventions: base units, `_total` for counters, `_seconds`, `_bytes`).
//! 2. Count it per worker (a `Cell` in [`RouteStats`], [`ClusterStats`] or
//!    [`WorkerStats`]) and copy it into the report.
//! 3. Emit it in [`render`], list it in docs/configuration.md under
//!    "Metrics", and add a panel to config/grafana/ringgate.json if operators
//!    should see it (tests/observability.rs checks the dashboard only queries
//!    exported names).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::latency;
use crate::http::head::Method;

/// Every metric ringgate exports.
pub mod names {
    /// Gauge, always 1; `version` label.
    pub const BUILD_INFO: &str = "ringgate_build_info";
    /// Counter: requests answered, by `route`, `method` and `status_class`.
    pub const REQUESTS: &str = "ringgate_requests_total";
    /// Histogram: request duration from the first head byte to the last
    /// response byte written, by `route`.
    pub const REQUEST_DURATION: &str = "ringgate_request_duration_seconds";
    /// Histogram: time from the start of the upstream exchange (a pooled
    /// connection taken, or a new one connected) to the end of the upstream
    /// response, by `route`.
    pub const UPSTREAM_DURATION: &str = "ringgate_upstream_duration_seconds";
    /// Counter: request bytes received from clients (head and body), by `route`.
    pub const REQUEST_BYTES: &str = "ringgate_request_bytes_total";
    /// Counter: response bytes written to clients (head and body), by `route`.
    pub const RESPONSE_BYTES: &str = "ringgate_response_bytes_total";
    /// Gauge: open downstream connections, by `worker`.
    pub const DOWNSTREAM_CONNECTIONS: &str = "ringgate_downstream_connections";
    /// Gauge: keep-alive connections parked between requests, by `worker`.
    pub const DOWNSTREAM_IDLE: &str = "ringgate_downstream_connections_idle";
    /// Gauge: keep-alive connections holding a read between requests, by
    /// `worker`.
    pub const DOWNSTREAM_HELD: &str = "ringgate_downstream_connections_held";
    /// Counter: requests handled, by `worker` (per-core balance).
    pub const WORKER_REQUESTS: &str = "ringgate_worker_requests_total";
    /// Gauge, always 1: the event loop each worker runs, by `worker`, `driver`.
    pub const WORKER_DRIVER: &str = "ringgate_worker_driver";
    pub const WORKER_WAIT_BATCHING: &str = "ringgate_worker_wait_batching";
    /// Counter: upstream connections opened, by `cluster`.
    pub const UPSTREAM_OPENED: &str = "ringgate_upstream_connections_opened_total";
    /// Counter: requests sent on a pooled (reused) connection, by `cluster`.
    pub const UPSTREAM_REUSED: &str = "ringgate_upstream_connections_reused_total";
    /// Counter: upstream connections closed, by `cluster`.
    pub const UPSTREAM_CLOSED: &str = "ringgate_upstream_connections_closed_total";
    /// Counter: upstream failures, by `cluster` and `kind` (`connect`,
    /// `timeout`, `reset`, `invalid`).
    pub const UPSTREAM_ERRORS: &str = "ringgate_upstream_errors_total";
    /// Gauge: 1 when an endpoint is in rotation, 0 while ejected by passive
    /// health checks; by `cluster` and `endpoint`, per `worker`.
    pub const ENDPOINT_HEALTHY: &str = "ringgate_upstream_endpoint_healthy";
    /// Counter: requests refused by an IP filter, by `route` (`(unmatched)`
    /// for the global filter, which runs before routing).
    pub const IP_DENIALS: &str = "ringgate_ip_filter_denials_total";
    /// Counter: admissions this worker learned from the others, by `worker`
    /// (rate-limit reconciliation at work).
    pub const RATE_SYNC_RECEIVED: &str = "ringgate_rate_limit_sync_received_total";
    /// Gauge: requests of a concurrency-capped route running, by `route`.
    pub const ROUTE_IN_FLIGHT: &str = "ringgate_route_in_flight";
    /// Gauge: requests waiting for a slot of a capped route, by `route`.
    pub const ROUTE_QUEUED: &str = "ringgate_route_queued";
    /// Counter: requests refused by a rate-limit policy, by `route`.
    pub const RATE_LIMITED: &str = "ringgate_rate_limited_total";
    /// Gauge: 1 while the last sync with the cluster store (Redis)
    /// succeeded; only exported in cluster mode.
    pub const RATE_STORE_UP: &str = "ringgate_rate_limit_store_up";
    /// Counter: syncs with the cluster store, by `result` (`ok`, `error`).
    pub const RATE_STORE_SYNCS: &str = "ringgate_rate_limit_store_syncs_total";
    /// Counter: rate-limit keys exchanged with the cluster store, by
    /// `direction` (`pushed`, `received`, `dropped`: not shared because the
    /// store was down or the interval's batch was full).
    pub const RATE_STORE_KEYS: &str = "ringgate_rate_limit_store_keys_total";
    /// Counter: requests refused by a route's auth policy, by `route` and
    /// `status` (`401`: no or invalid credentials, `403`: not allowed).
    pub const AUTH_DENIED: &str = "ringgate_auth_denied_total";
    /// Counter: token cache lookups (verified JWTs, introspection
    /// answers), by `worker` and `result` (`hit`, `miss`: a full
    /// verification or an introspection call).
    pub const AUTH_CACHE: &str = "ringgate_auth_token_cache_total";
    /// Counter: signing-key fetches (JWKS, OIDC discovery), by `issuer` and
    /// `result` (`ok`, `error`).
    pub const JWKS_FETCHES: &str = "ringgate_auth_jwks_fetches_total";
    /// Gauge: signing keys of the last good fetch, by `issuer`.
    pub const JWKS_KEYS: &str = "ringgate_auth_jwks_keys";
    /// Counter: TLS handshakes, by `worker` and `result` (`ok`, `error`:
    /// failed or timed out).
    pub const TLS_HANDSHAKES: &str = "ringgate_tls_handshakes_total";
    /// Counter: connections closed because their task panicked (a bug:
    /// the worker goes on serving), by `worker`.
    pub const CONNECTION_PANICS: &str = "ringgate_connection_panics_total";
    /// Gauge: `notAfter` of each served certificate (seconds since the
    /// epoch), by `listener` and `certificate` (the configured file).
    pub const TLS_CERT_EXPIRY: &str = "ringgate_tls_certificate_expiry_timestamp_seconds";
    /// Counter: token introspection calls, by `endpoint` and `result`
    /// (`active`, `inactive`, `error`).
    pub const INTROSPECTIONS: &str = "ringgate_auth_introspections_total";
    /// Counter: config reloads, by `result` (`ok`, `refused`).
    pub const CONFIG_RELOADS: &str = "ringgate_config_reloads_total";
    /// Counter: log lines dropped because the writer fell behind, by `log`
    /// (`access`, `audit`).
    pub const LOG_DROPPED: &str = "ringgate_log_dropped_lines_total";
    /// Counter: log lines written, by `log`.
    pub const LOG_LINES: &str = "ringgate_log_lines_total";
}

/// Prometheus histogram bucket bounds, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// `method` label values, indexed by [`method_index`].
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The route label of requests no route matched (404, and requests
/// refused before routing).
pub const UNMATCHED: &str = "(unmatched)";

fn method_index(m: Method) -> usize {
    match m {
        Method::Get => 0,
        Method::Head => 1,
        Method::Post => 2,
        Method::Put => 3,
        Method::Delete => 4,
        Method::Connect => 5,
        Method::Options => 6,
        Method::Trace => 7,
        Method::Patch => 8,
        Method::Other => 9,
    }
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// What kind of upstream failure a request met (`kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Connection refused, unreachable, reset while connecting.
    Connect = 0,
    /// Connect or response timeout.
    Timeout = 1,
    /// The connection closed or broke mid-exchange.
    Reset = 2,
    /// The upstream sent something that is not valid HTTP/1.1.
    Invalid = 3,
    /// The TLS handshake failed (certificate not trusted or not for the
    /// name, no common version, an alert).
    Tls = 4,
}

const ERROR_KINDS: [&str; 5] = ["connect", "timeout", "reset", "invalid", "tls"];

/// Counters of one route on one worker. Kept across reloads by name.
pub struct RouteStats {
    pub name: Arc<str>,
    /// Requests by method and status class.
    requests: [[Cell<u64>; 5]; 10],
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    /// Request and upstream durations in microseconds. Allocated at the
    /// route's first request, so that large route tables only pay for the
    /// routes that see traffic.
    duration: RefCell<Option<Histogram<u64>>>,
    upstream: RefCell<Option<Histogram<u64>>>,
    /// Exact sums for the Prometheus `_sum` series.
    duration_sum_us: Cell<u64>,
    upstream_sum_us: Cell<u64>,
    /// Requests refused by an IP filter.
    pub denied: Cell<u64>,
    /// Requests refused by a rate-limit policy.
    pub limited: Cell<u64>,
    /// Requests refused by the route's auth policy: 401 and 403.
    pub unauthenticated: Cell<u64>,
    pub forbidden: Cell<u64>,
    /// Access-log sampling credit in millionths: a line is written whenever
    /// it reaches one million.
    sample_credit: Cell<u32>,
}

/// What one finished request adds to its route's counters.
pub struct Observation {
    pub method: Method,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Duration,
    pub upstream: Option<Duration>,
}

impl RouteStats {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            requests: Default::default(),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            duration: RefCell::new(None),
            upstream: RefCell::new(None),
            duration_sum_us: Cell::new(0),
            upstream_sum_us: Cell::new(0),
            denied: Cell::new(0),
            limited: Cell::new(0),
            unauthenticated: Cell::new(0),
            forbidden: Cell::new(0),
            sample_credit: Cell::new(0),
        }
    }

    pub fn record(&self, o: &Observation) {
        let c = &self.requests[method_index(o.method)][class_index(o.status)];
        c.set(c.get() + 1);
        self.bytes_in.set(self.bytes_in.get() + o.bytes_in);
        self.bytes_out.set(self.bytes_out.get() + o.bytes_out);
        let us = micros(o.total);
        self.duration_sum_us.set(self.duration_sum_us.get() + us);
        latency::record(&mut self.duration.borrow_mut(), us);
        if let Some(up) = o.upstream {
            let us = micros(up);
            self.upstream_sum_us.set(self.upstream_sum_us.get() + us);
            latency::record(&mut self.upstream.borrow_mut(), us);
        }
    }

    /// Whether this request gets an access-log line, for a route that logs
    /// `ppm` millionths of its requests. Deterministic and exact in
    /// aggregate: `n * ppm / 1e6` lines for `n` requests, evenly spread.
    pub fn sample(&self, ppm: u32) -> bool {
        if ppm >= 1_000_000 {
            return true;
        }
        let credit = self.sample_credit.get() + ppm;
        if credit >= 1_000_000 {
            self.sample_credit.set(credit - 1_000_000);
            true
        } else {
            self.sample_credit.set(credit);
            false
        }
    }

    fn report(&self) -> RouteReport {
        RouteReport {
            requests: self
                .requests
                .each_ref()
                .map(|row| row.each_ref().map(Cell::get)),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            duration: self.duration.borrow().clone(),
            upstream: self.upstream.borrow().clone(),
            duration_sum_us: self.duration_sum_us.get(),
            upstream_sum_us: self.upstream_sum_us.get(),
            denied: self.denied.get(),
            limited: self.limited.get(),
            unauthenticated: self.unauthenticated.get(),
            forbidden: self.forbidden.get(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Upstream connection counters of one cluster on one worker.
#[derive(Default)]
pub struct ClusterStats {
    pub opened: Cell<u64>,
    pub reused: Cell<u64>,
    pub closed: Cell<u64>,
    errors: [Cell<u64>; 5],
}

impl ClusterStats {
    pub fn error(&self, kind: UpstreamErrorKind) {
        let c = &self.errors[kind as usize];
        c.set(c.get() + 1);
    }

    fn report(&self) -> ClusterReport {
        ClusterReport {
            opened: self.opened.get(),
            reused: self.reused.get(),
            closed: self.closed.get(),
            errors: self.errors.each_ref().map(Cell::get),
        }
    }
}

/// All counters of one worker. Routes and clusters are kept by name for the
/// worker's lifetime, so counters stay monotonic across reloads; the table
/// grows only with names a config has used.
#[derive(Default)]
pub struct WorkerStats {
    routes: RefCell<BTreeMap<Arc<str>, Rc<RouteStats>>>,
    clusters: RefCell<BTreeMap<Arc<str>, Rc<ClusterStats>>>,
    pub requests: Cell<u64>,
}

impl WorkerStats {
    /// The counters of route `name` (created on first use, at config install).
    pub fn route(&self, name: &str) -> Rc<RouteStats> {
        let mut routes = self.routes.borrow_mut();
        if let Some(r) = routes.get(name) {
            return r.clone();
        }
        let name: Arc<str> = name.into();
        let stats = Rc::new(RouteStats::new(name.clone()));
        routes.insert(name, stats.clone());
        stats
    }

    pub fn cluster(&self, name: &str) -> Rc<ClusterStats> {
        self.clusters
            .borrow_mut()
            .entry(name.into())
            .or_default()
            .clone()
    }

    /// A copy of everything, for the admin thread.
    pub fn report(&self) -> (Named<RouteReport>, Named<ClusterReport>) {
        let routes = self
            .routes
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.report()))
            .collect();
        let clusters = self
            .clusters
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.report()))
            .collect();
        (routes, clusters)
    }
}

/// Reports by route or cluster name.
pub type Named<T> = Vec<(Arc<str>, T)>;

/// A route's counters as reported (and merged).
#[derive(Clone, Default)]
pub struct RouteReport {
    pub requests: [[u64; 5]; 10],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Option<Histogram<u64>>,
    pub upstream: Option<Histogram<u64>>,
    pub duration_sum_us: u64,
    pub upstream_sum_us: u64,
    pub denied: u64,
    pub limited: u64,
    pub unauthenticated: u64,
    pub forbidden: u64,
}

impl RouteReport {
    fn add(&mut self, other: &RouteReport) {
        for (row, o) in self.requests.iter_mut().zip(&other.requests) {
            for (c, o) in row.iter_mut().zip(o) {
                *c += o;
            }
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        latency::merge(&mut self.duration, other.duration.as_ref());
        latency::merge(&mut self.upstream, other.upstream.as_ref());
        self.duration_sum_us += other.duration_sum_us;
        self.upstream_sum_us += other.upstream_sum_us;
        self.denied += other.denied;
        self.limited += other.limited;
        self.unauthenticated += other.unauthenticated;
        self.forbidden += other.forbidden;
    }
}

#[derive(Clone, Copy, Default)]
pub struct ClusterReport {
    pub opened: u64,
    pub reused: u64,
    pub closed: u64,
    pub errors: [u64; 5],
}

/// One endpoint's passive-health state on one worker.
pub struct EndpointReport {
    pub cluster: Arc<str>,
    pub address: std::net::SocketAddr,
    pub healthy: bool,
}

/// What a worker answers a metrics collection with.
pub struct WorkerReport {
    pub worker: usize,
    pub driver: &'static str,
    pub connections: u64,
    /// Keep-alive connections waiting for a request without buffers.
    pub idle_connections: u64,
    /// Keep-alive connections waiting for a request with a held read.
    pub held_connections: u64,
    /// Whether the worker's io_uring waits batch now (it is busy enough).
    pub wait_batching: bool,
    pub requests: u64,
    pub rate_sync_received: u64,
    /// Verified-token cache lookups that found / did not find the token.
    pub auth_cache: (u64, u64),
    /// TLS handshakes completed / failed (or timed out).
    pub tls_handshakes: (u64, u64),
    pub connection_panics: u64,
    /// `(route, in flight, queued)` of concurrency-capped routes.
    pub gates: Vec<(Arc<str>, u64, u64)>,
    pub routes: Named<RouteReport>,
    pub clusters: Named<ClusterReport>,
    pub endpoints: Vec<EndpointReport>,
}

/// Route reports of all workers summed by route name.
pub fn merge_routes(reports: &[WorkerReport]) -> BTreeMap<Arc<str>, RouteReport> {
    let mut merged: BTreeMap<Arc<str>, RouteReport> = BTreeMap::new();
    for r in reports {
        for (name, route) in &r.routes {
            merged.entry(name.clone()).or_default().add(route);
        }
    }
    merged
}

/// Figures the admin and control threads keep themselves.
pub struct ProcessFigures {
    pub reloads_ok: u64,
    pub reloads_refused: u64,
    /// `(log, written, dropped)`.
    pub logs: Vec<(&'static str, u64, u64)>,
    pub store: crate::ratelimit::cluster::StoreSnapshot,
    /// `(issuer, fetches ok, fetches failed, keys)`.
    pub jwks: Vec<(String, (u64, u64, u64))>,
    /// `(endpoint, active, inactive, failed)`.
    pub introspections: Vec<(String, (u64, u64, u64))>,
    /// `(listener, certificate file, notAfter)` of the current config.
    pub certificates: Vec<(String, String, i64)>,
}

/// The admin thread's recorder: the facade's counters and gauges land here.
pub struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Exporter {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
    }
}

impl Exporter {
    /// Renders the Prometheus text exposition of all reports.
    pub fn render(&self, reports: &[WorkerReport], process: &ProcessFigures) -> String {
        metrics::with_local_recorder(&self.recorder, || emit(reports, process));
        let mut out = self.handle.render();
        render_histograms(&mut out, &merge_routes(reports));
        out
    }
}

/// Sets every counter and gauge through the `metrics` facade.
fn emit(reports: &[WorkerReport], process: &ProcessFigures) {
    use metrics::{counter, describe_counter, describe_gauge, gauge};
    describe_gauge!(names::BUILD_INFO, "Build information; always 1.");
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);

    describe_counter!(names::REQUESTS, "Requests answered.");
    describe_counter!(names::REQUEST_BYTES, "Request bytes received from clients.");
    describe_counter!(names::RESPONSE_BYTES, "Response bytes written to clients.");
    describe_counter!(names::IP_DENIALS, "Requests refused by an IP filter.");
    describe_counter!(
        names::RATE_LIMITED,
        "Requests refused by a rate-limit policy."
    );
    for (route, r) in &merge_routes(reports) {
        for (m, row) in r.requests.iter().enumerate() {
            for (c, &n) in row.iter().enumerate() {
                if n > 0 {
                    counter!(names::REQUESTS, "route" => route.to_string(), "method" => METHODS[m], "status_class" => CLASSES[c]).absolute(n);
                }
            }
        }
        counter!(names::REQUEST_BYTES, "route" => route.to_string()).absolute(r.bytes_in);
        counter!(names::RESPONSE_BYTES, "route" => route.to_string()).absolute(r.bytes_out);
        counter!(names::IP_DENIALS, "route" => route.to_string()).absolute(r.denied);
        counter!(names::RATE_LIMITED, "route" => route.to_string()).absolute(r.limited);
        if r.unauthenticated + r.forbidden > 0 {
            counter!(names::AUTH_DENIED, "route" => route.to_string(), "status" => "401")
                .absolute(r.unauthenticated);
            counter!(names::AUTH_DENIED, "route" => route.to_string(), "status" => "403")
                .absolute(r.forbidden);
        }
    }

    describe_gauge!(
        names::DOWNSTREAM_CONNECTIONS,
        "Open downstream connections."
    );
    describe_gauge!(
        names::DOWNSTREAM_IDLE,
        "Keep-alive connections waiting for their next request without buffers (io_uring)."
    );
    describe_gauge!(
        names::DOWNSTREAM_HELD,
        "Keep-alive connections waiting for their next request with a 1 KiB read armed (io_uring)."
    );
    describe_counter!(names::WORKER_REQUESTS, "Requests handled by each worker.");
    describe_gauge!(
        names::WORKER_DRIVER,
        "The event loop of each worker; always 1."
    );
    describe_gauge!(
        names::WORKER_WAIT_BATCHING,
        "1 while a worker's io_uring waits collect several completions (it is busy enough), else 0."
    );
    describe_gauge!(
        names::ENDPOINT_HEALTHY,
        "1 while an endpoint is in rotation, 0 while ejected."
    );
    let mut clusters: BTreeMap<Arc<str>, ClusterReport> = BTreeMap::new();
    for w in reports {
        let worker = w.worker.to_string();
        gauge!(names::DOWNSTREAM_CONNECTIONS, "worker" => worker.clone()).set(w.connections as f64);
        gauge!(names::DOWNSTREAM_IDLE, "worker" => worker.clone()).set(w.idle_connections as f64);
        gauge!(names::DOWNSTREAM_HELD, "worker" => worker.clone()).set(w.held_connections as f64);
        counter!(names::WORKER_REQUESTS, "worker" => worker.clone()).absolute(w.requests);
        counter!(names::RATE_SYNC_RECEIVED, "worker" => worker.clone())
            .absolute(w.rate_sync_received);
        counter!(names::AUTH_CACHE, "worker" => worker.clone(), "result" => "hit")
            .absolute(w.auth_cache.0);
        counter!(names::AUTH_CACHE, "worker" => worker.clone(), "result" => "miss")
            .absolute(w.auth_cache.1);
        counter!(names::TLS_HANDSHAKES, "worker" => worker.clone(), "result" => "ok")
            .absolute(w.tls_handshakes.0);
        counter!(names::TLS_HANDSHAKES, "worker" => worker.clone(), "result" => "error")
            .absolute(w.tls_handshakes.1);
        counter!(names::CONNECTION_PANICS, "worker" => worker.clone())
            .absolute(w.connection_panics);
        gauge!(names::WORKER_DRIVER, "worker" => worker.clone(), "driver" => w.driver).set(1.0);
        gauge!(names::WORKER_WAIT_BATCHING, "worker" => worker.clone()).set(if w.wait_batching {
            1.0
        } else {
            0.0
        });
        for e in &w.endpoints {
            gauge!(names::ENDPOINT_HEALTHY, "cluster" => e.cluster.to_string(), "endpoint" => e.address.to_string(), "worker" => worker.clone())
                .set(if e.healthy { 1.0 } else { 0.0 });
        }
        for (name, c) in &w.clusters {
            let sum = clusters.entry(name.clone()).or_default();
            sum.opened += c.opened;
            sum.reused += c.reused;
            sum.closed += c.closed;
            for (s, e) in sum.errors.iter_mut().zip(c.errors) {
                *s += e;
            }
        }
    }

    describe_gauge!(
        names::ROUTE_IN_FLIGHT,
        "Requests of a capped route running."
    );
    describe_gauge!(
        names::ROUTE_QUEUED,
        "Requests waiting for a slot of a capped route."
    );
    let mut gates: BTreeMap<Arc<str>, (u64, u64)> = BTreeMap::new();
    for w in reports {
        for (route, running, queued) in &w.gates {
            let g = gates.entry(route.clone()).or_default();
            g.0 += running;
            g.1 += queued;
        }
    }
    for (route, (running, queued)) in &gates {
        gauge!(names::ROUTE_IN_FLIGHT, "route" => route.to_string()).set(*running as f64);
        gauge!(names::ROUTE_QUEUED, "route" => route.to_string()).set(*queued as f64);
    }

    describe_counter!(names::UPSTREAM_OPENED, "Upstream connections opened.");
    describe_counter!(
        names::UPSTREAM_REUSED,
        "Requests sent on a reused upstream connection."
    );
    describe_counter!(names::UPSTREAM_CLOSED, "Upstream connections closed.");
    describe_counter!(names::UPSTREAM_ERRORS, "Upstream failures by kind.");
    for (name, c) in &clusters {
        let cluster = name.to_string();
        counter!(names::UPSTREAM_OPENED, "cluster" => cluster.clone()).absolute(c.opened);
        counter!(names::UPSTREAM_REUSED, "cluster" => cluster.clone()).absolute(c.reused);
        counter!(names::UPSTREAM_CLOSED, "cluster" => cluster.clone()).absolute(c.closed);
        for (kind, &n) in ERROR_KINDS.iter().zip(&c.errors) {
            counter!(names::UPSTREAM_ERRORS, "cluster" => cluster.clone(), "kind" => *kind)
                .absolute(n);
        }
    }

    describe_counter!(
        names::AUTH_DENIED,
        "Requests refused by a route's auth policy."
    );
    describe_counter!(names::AUTH_CACHE, "Verified-token cache lookups.");
    describe_counter!(names::CONFIG_RELOADS, "Config reloads by result.");
    counter!(names::CONFIG_RELOADS, "result" => "ok").absolute(process.reloads_ok);
    counter!(names::CONFIG_RELOADS, "result" => "refused").absolute(process.reloads_refused);
    describe_counter!(names::LOG_LINES, "Log lines written.");
    describe_counter!(
        names::LOG_DROPPED,
        "Log lines dropped because the writer fell behind."
    );
    for &(log, written, dropped) in &process.logs {
        counter!(names::LOG_LINES, "log" => log).absolute(written);
        counter!(names::LOG_DROPPED, "log" => log).absolute(dropped);
    }

    describe_counter!(names::JWKS_FETCHES, "Signing-key fetches by issuer.");
    describe_gauge!(names::JWKS_KEYS, "Signing keys of the last good fetch.");
    for (issuer, (ok, failed, keys)) in &process.jwks {
        counter!(names::JWKS_FETCHES, "issuer" => issuer.clone(), "result" => "ok").absolute(*ok);
        counter!(names::JWKS_FETCHES, "issuer" => issuer.clone(), "result" => "error")
            .absolute(*failed);
        gauge!(names::JWKS_KEYS, "issuer" => issuer.clone()).set(*keys as f64);
    }
    describe_counter!(names::TLS_HANDSHAKES, "TLS handshakes by result.");
    describe_counter!(
        names::CONNECTION_PANICS,
        "Connections closed because their task panicked."
    );
    describe_gauge!(
        names::TLS_CERT_EXPIRY,
        "notAfter of each served certificate, seconds since the epoch."
    );
    for (listener, file, not_after) in &process.certificates {
        gauge!(names::TLS_CERT_EXPIRY, "listener" => listener.clone(), "certificate" => file.clone())
            .set(*not_after as f64);
    }
    describe_counter!(
        names::INTROSPECTIONS,
        "Token introspection calls by endpoint."
    );
    for (endpoint, (active, inactive, failed)) in &process.introspections {
        for (result, n) in [
            ("active", active),
            ("inactive", inactive),
            ("error", failed),
        ] {
            counter!(names::INTROSPECTIONS, "endpoint" => endpoint.clone(), "result" => result)
                .absolute(*n);
        }
    }

    let store = process.store;
    if store.configured {
        describe_gauge!(
            names::RATE_STORE_UP,
            "1 while the last sync with the rate-limit store succeeded."
        );
        describe_counter!(names::RATE_STORE_SYNCS, "Syncs with the rate-limit store.");
        describe_counter!(
            names::RATE_STORE_KEYS,
            "Rate-limit keys exchanged with the store."
        );
        gauge!(names::RATE_STORE_UP).set(if store.up { 1.0 } else { 0.0 });
        counter!(names::RATE_STORE_SYNCS, "result" => "ok").absolute(store.syncs);
        counter!(names::RATE_STORE_SYNCS, "result" => "error").absolute(store.errors);
        for (direction, n) in [
            ("pushed", store.pushed),
            ("received", store.received),
            ("dropped", store.dropped),
        ] {
            counter!(names::RATE_STORE_KEYS, "direction" => direction).absolute(n);
        }
    }
}

/// Renders the two duration histograms of every route.
fn render_histograms(out: &mut String, routes: &BTreeMap<Arc<str>, RouteReport>) {
    for (name, help, pick) in [
        (
            names::REQUEST_DURATION,
            "Request duration, first head byte to last response byte.",
            (|r: &RouteReport| (r.duration.as_ref(), r.duration_sum_us))
                as fn(&RouteReport) -> (Option<&Histogram<u64>>, u64),
        ),
        (
            names::UPSTREAM_DURATION,
            "Upstream exchange duration, connection taken or opened to response complete.",
            |r: &RouteReport| (r.upstream.as_ref(), r.upstream_sum_us),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (route, r) in routes {
            let (Some(h), sum_us) = pick(r) else { continue };
            let route = escape_label(route);
            for le in BUCKETS {
                let n = h.count_between(0, (le * 1e6) as u64);
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {n}");
            }
            let n = h.len();
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {n}");
            let _ = writeln!(
                out,
                "{name}_sum{{route=\"{route}\"}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {n}");
        }
    }
}

/// Escapes a label value (text exposition format).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_exact_in_aggregate() {
        let r = RouteStats::new("r".into());
        let logged = (0..1000).filter(|_| r.sample(100_000)).count();
        assert_eq!(logged, 100);
        let none = (0..1000).filter(|_| r.sample(0)).count();
        assert_eq!(none, 0);
        let all = (0..1000).filter(|_| r.sample(1_000_000)).count();
        assert_eq!(all, 1000);
    }

    #[test]
    fn status_classes() {
        assert_eq!(CLASSES[class_index(101)], "1xx");
        assert_eq!(CLASSES[class_index(204)], "2xx");
        assert_eq!(CLASSES[class_index(404)], "4xx");
        assert_eq!(CLASSES[class_index(599)], "5xx");
        assert_eq!(CLASSES[class_index(999)], "5xx");
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
    }
}

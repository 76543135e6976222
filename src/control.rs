//! The control thread: binds sockets, starts the log writers, the admin
//! listener and the workers, then waits for signals. SIGHUP reloads the
//! config (a bad file is refused and the running config keeps serving);
//! SIGUSR1 reopens log files (logrotate); SIGTERM/SIGINT drain and stop.
//! Nothing here runs on the request path.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::observability::access_log::{field_str, field_u64};
use crate::observability::Logs;
use crate::sys::AllocCounter;
use crate::worker::{self, Control, WorkerHandle};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Worker(String),
}

/// Runs the gateway until SIGTERM or SIGINT has drained it.
///
/// # Errors
/// [`StartError`] when a socket cannot be bound or a worker cannot start.
pub fn run(config_path: PathBuf, config: Config) -> Result<(), StartError> {
    let config = Arc::new(config);
    // Registered first, so a signal sent during start-up is not lost.
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    let logs = Arc::new(Logs::start(&config)?);

    warn_unverified(&config);
    let (per_worker, addresses) = worker::bind_listeners(&config)?;
    for (l, address) in config.listeners.iter().zip(&addresses) {
        tracing::info!(listener = %l.name, %address, "listening");
    }
    // One allocation counter per worker, for the process's lifetime.
    let allocations: &'static [AllocCounter] = Box::leak(
        (0..config.workers)
            .map(|_| AllocCounter::default())
            .collect(),
    );
    let state = Arc::new(AdminState::new(allocations, logs.clone()));
    if let Some(address) = config.admin {
        let socket = admin::bind(address).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin listener cannot bind {address}: {e}"),
            )
        })?;
        tracing::info!(address = %socket.local_addr()?, "admin listening");
        admin::spawn(socket, state.clone())?;
    }

    let cores = if config.pin_workers {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let (started_tx, started_rx) = mpsc::channel();
    let mut handles: Vec<WorkerHandle> = Vec::with_capacity(config.workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        handles.push(worker::spawn(
            id,
            config.clone(),
            listeners,
            core,
            &allocations[id],
            logs.clone(),
            started_tx.clone(),
        )?);
    }
    drop(started_tx);
    let mut drivers = Vec::with_capacity(handles.len());
    for _ in 0..handles.len() {
        match started_rx.recv() {
            Ok(Ok(driver)) => drivers.push(driver),
            Ok(Err(message)) => {
                stop(handles);
                return Err(StartError::Worker(message));
            }
            Err(_) => {
                stop(handles);
                return Err(StartError::Worker("a worker exited during start-up".into()));
            }
        }
    }
    let driver = drivers.first().map_or("none", |d| d.name());
    let completions = drivers.first().map_or("none", |d| d.completions());
    let wait_batch = drivers.first().map_or(1, |d| d.wait_batch());
    state.set_workers(handles.iter().map(|h| h.control.clone()).collect());
    // Each worker learns the others and the cluster store, for rate-limit
    // reconciliation.
    let store = match &config.rate_limit.redis {
        Some(cfg) => Some(start_store(cfg, &config, &handles, &state, &logs)?),
        None => None,
    };
    let jwks = start_key_fetcher(&config, &handles, &state)?;
    state.set_certificates(&config);
    let mut introspectors = Introspectors::new(state.introspections.clone());
    introspectors.start_if_needed(&config)?;
    {
        for (i, h) in handles.iter().enumerate() {
            let workers = handles
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.control.clone())
                .collect();
            let peers = worker::Peers {
                workers,
                store: store.clone(),
                jwks: Some(jwks.clone()),
                introspect: Some(introspectors.jobs.clone()),
            };
            let _ = h.control.send_blocking(Control::Peers(peers));
        }
    }
    drop(store);
    // Watched files are stamped before "ready": a change made once the
    // gateway is ready is always seen as a change.
    let watch = Arc::new(std::sync::Mutex::new(watch_list(&config)));
    spawn_list_watcher(watch.clone())?;
    // Readiness first: whoever acts on the log line must find /readyz ready.
    state.ready.store(true, Ordering::Release);
    tracing::info!(
        workers = handles.len(),
        driver,
        completions,
        wait_batch,
        "ready"
    );

    let mut current = config;
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                let outcome = reload(&config_path, &handles, &mut current, &logs);
                let ok = outcome.is_ok();
                if ok {
                    state.set_certificates(&current);
                    if let Err(e) = introspectors.start_if_needed(&current) {
                        tracing::error!(error = %e, "cannot start the introspection threads");
                    }
                    let _ = jwks.try_send(crate::auth::jwks::FetchMsg::Sources(remote_sources(
                        &current,
                    )));
                    if let Ok(mut w) = watch.lock() {
                        *w = watch_list(&current);
                    }
                }
                let counter = if ok {
                    &state.reloads_ok
                } else {
                    &state.reloads_refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // Audited last: whoever sees the line finds the reload
                // finished and counted.
                let file = config_path.display().to_string();
                logs.audit("config_reload", |l| {
                    field_str(l, "result", if ok { b"ok" } else { b"refused" });
                    field_str(l, "file", file.as_bytes());
                    if let Err(errors) = outcome {
                        // The count only: messages may quote config values.
                        field_u64(l, "errors", errors as u64);
                    }
                });
            }
            SIGUSR1 => {
                logs.reopen();
                logs.audit("log_reopen", |_| {});
                tracing::info!("log files reopened");
            }
            _ => break,
        }
    }
    tracing::info!(drain_timeout = ?current.drain_timeout, "shutting down: draining connections");
    state.ready.store(false, Ordering::Release);
    stop(handles);
    logs.close();
    tracing::info!("stopped");
    Ok(())
}

/// Starts the cluster store's sync thread; returns where workers report
/// their admissions. The first sync runs before the workers hear of it, so
/// a gateway failing closed refuses from its first request when the store
/// is down at start.
fn start_store(
    cfg: &crate::ratelimit::cluster::StoreConfig,
    config: &Config,
    handles: &[WorkerHandle],
    state: &AdminState,
    logs: &Arc<Logs>,
) -> Result<mpsc::SyncSender<crate::ratelimit::Deltas>, StartError> {
    use crate::ratelimit::cluster::{Store, StoreReport};
    let mut store = Store::new(
        cfg.clone(),
        config.rate_limit.sync_interval,
        state.store.clone(),
    )
    .map_err(StartError::Worker)?;
    tracing::info!(store = %store.target(), failure = ?cfg.failure, "rate limits shared through Redis");
    let workers: Vec<_> = handles.iter().map(|h| h.control.clone()).collect();
    let logs = logs.clone();
    let publish = move |report: StoreReport| {
        if let StoreReport::Refuse(refuse) = report {
            logs.audit("rate_limit_store", |l| {
                field_str(l, "state", if refuse { b"refusing" } else { b"serving" });
            });
        }
        for w in &workers {
            let _ = w.try_send(match &report {
                StoreReport::Ahead(a) => Control::RateAhead(a.clone()),
                StoreReport::Refuse(r) => Control::RateRefuse(*r),
            });
        }
    };
    store.sync(&publish);
    // Room for a few intervals of every worker's reports.
    let (tx, rx) = mpsc::sync_channel(16 * handles.len().max(1));
    std::thread::Builder::new()
        .name("ringgate-ratelimit-sync".into())
        .spawn(move || store.run(rx, publish))?;
    Ok(tx)
}

/// Issuers whose keys are fetched.
fn remote_sources(config: &Config) -> Vec<crate::auth::jwks::RemoteSource> {
    config
        .auth
        .issuers
        .iter()
        .filter_map(|i| i.remote.clone())
        .collect()
}

/// Fetches every remote issuer's keys once (before the gateway reports
/// ready), then starts the thread that refreshes them; returns where
/// workers and reloads send refetch requests and new sources.
fn start_key_fetcher(
    config: &Config,
    handles: &[WorkerHandle],
    state: &AdminState,
) -> Result<mpsc::SyncSender<crate::auth::jwks::FetchMsg>, StartError> {
    use crate::auth::jwks::Fetcher;
    let workers: Vec<_> = handles.iter().map(|h| h.control.clone()).collect();
    let publish = move |issuer: &str, keys: Arc<crate::auth::jwt::KeySet>| {
        for w in &workers {
            let _ = w.try_send(Control::AuthKeys(issuer.into(), keys.clone()));
        }
    };
    let mut fetcher = Fetcher::new(remote_sources(config), state.jwks.clone());
    fetcher.fetch_due(&publish);
    let (tx, rx) = mpsc::sync_channel(64);
    std::thread::Builder::new()
        .name("ringgate-keys".into())
        .spawn(move || fetcher.run(rx, publish))?;
    Ok(tx)
}

/// The token introspection pool: its queue exists from the start (the
/// workers hold its sender), its threads from the first config that names
/// an endpoint. The thread count is read then and kept.
struct Introspectors {
    jobs: async_channel::Sender<crate::auth::introspect::Job>,
    queue: async_channel::Receiver<crate::auth::introspect::Job>,
    started: bool,
    figures: Arc<crate::auth::introspect::IntrospectFigures>,
}

impl Introspectors {
    fn new(figures: Arc<crate::auth::introspect::IntrospectFigures>) -> Introspectors {
        // Room for a burst of first-seen tokens; beyond it requests are
        // refused with 503 rather than queued without bound.
        let (jobs, queue) = async_channel::bounded(1024);
        Introspectors {
            jobs,
            queue,
            started: false,
            figures,
        }
    }

    fn start_if_needed(&mut self, config: &Config) -> std::io::Result<()> {
        if self.started || config.auth.introspection.is_empty() {
            return Ok(());
        }
        let agent = crate::auth::introspect::agent();
        for i in 0..config.auth.introspection_threads {
            let (queue, agent, figures) = (self.queue.clone(), agent.clone(), self.figures.clone());
            std::thread::Builder::new()
                .name(format!("ringgate-introspect-{i}"))
                .spawn(move || crate::auth::introspect::serve(queue, agent, figures))?;
        }
        self.started = true;
        Ok(())
    }
}

/// The list files a config read and how often to check them.
fn watch_list(config: &Config) -> (Vec<std::path::PathBuf>, std::time::Duration) {
    (
        config.security.watched_files.clone(),
        config.security.watch_interval,
    )
}

/// Checks the watched files (IP lists, certificates, CA bundles) for
/// changes (size or modification time) and reloads the whole config
/// through SIGHUP when one changed, so a change is validated, logged and
/// audited like any reload. The first stamps are taken before this
/// returns.
fn spawn_list_watcher(
    watch: Arc<std::sync::Mutex<(Vec<std::path::PathBuf>, std::time::Duration)>>,
) -> std::io::Result<()> {
    type Stamp = Option<(std::time::SystemTime, u64)>;
    let stamp = |p: &Path| -> Stamp {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    let stamps = move |files: &[std::path::PathBuf]| -> Vec<(std::path::PathBuf, Stamp)> {
        files.iter().map(|f| (f.clone(), stamp(f))).collect()
    };
    let mut seen = match watch.lock() {
        Ok(w) => stamps(&w.0),
        Err(_) => Vec::new(),
    };
    std::thread::Builder::new()
        .name("ringgate-watch".into())
        .spawn(move || loop {
            let (files, interval) = match watch.lock() {
                Ok(w) => w.clone(),
                Err(_) => return,
            };
            std::thread::sleep(interval);
            let now = stamps(&files);
            let changed = now
                .iter()
                .any(|(f, s)| seen.iter().any(|(g, old)| g == f && old != s));
            seen = now;
            if changed {
                tracing::info!(
                    "a watched file (IP list, certificate) changed; reloading the config"
                );
                let _ = signal_hook::low_level::raise(SIGHUP);
            }
        })?;
    Ok(())
}

/// Names, at every start and reload, each cluster whose upstream
/// certificates are not verified.
fn warn_unverified(config: &Config) {
    for c in &config.clusters {
        if c.tls.as_ref().is_some_and(|t| t.insecure) {
            tracing::warn!(
                cluster = %c.name,
                "upstream TLS certificates are NOT verified (insecure_skip_verify = true): anyone on the network path can impersonate these upstreams"
            );
        }
    }
}

fn stop(handles: Vec<WorkerHandle>) {
    for h in &handles {
        let _ = h.control.send_blocking(Control::Shutdown);
    }
    for h in handles {
        let _ = h.thread.join();
    }
}

/// How long a reload waits for every worker to confirm the new snapshot.
const RELOAD_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads the file again and hands the new snapshot to every worker.
/// Returns, when the file is refused, how many errors it has.
fn reload(
    path: &Path,
    handles: &[WorkerHandle],
    current: &mut Arc<Config>,
    logs: &Logs,
) -> Result<(), usize> {
    let new = match Config::load(path) {
        Ok(new) => new,
        Err(e) => {
            for d in &e.diagnostics {
                tracing::error!("{d}");
            }
            tracing::error!("config reload refused; the running config keeps serving");
            return Err(e.diagnostics.len());
        }
    };
    let listeners_changed = new.listeners.len() != current.listeners.len()
        || new
            .listeners
            .iter()
            .zip(&current.listeners)
            .any(|(a, b)| a.address != b.address || a.name != b.name);
    let logs_changed = new.access_log.destination != logs.destinations.0
        || new.audit_log != logs.destinations.1
        || new.access_log.queue != current.access_log.queue
        || new.access_log.batch_bytes != current.access_log.batch_bytes;
    if listeners_changed
        || logs_changed
        || new.rate_limit.table_size != current.rate_limit.table_size
        || new.rate_limit.redis != current.rate_limit.redis
        || new.workers != current.workers
        || new.admin != current.admin
    {
        tracing::warn!(
            "listeners, workers, admin address, log destinations, the rate-limit table size and [rate_limit.redis] change only on restart; the rest is reloaded"
        );
    }
    let new = Arc::new(new);
    // Each worker acknowledges once it serves the new snapshot, so "config
    // reloaded" (and the audit line after it) means every worker has it.
    let (installed, acks) = mpsc::sync_channel(handles.len());
    let sent = handles
        .iter()
        .map(|h| {
            h.control
                .send_blocking(Control::Reload(new.clone(), installed.clone()))
        })
        .filter(Result::is_ok)
        .count();
    drop(installed);
    let deadline = std::time::Instant::now() + RELOAD_ACK_TIMEOUT;
    let acked = (0..sent)
        .take_while(|_| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            acks.recv_timeout(left).is_ok()
        })
        .count();
    if acked < handles.len() {
        tracing::warn!(
            workers = handles.len(),
            acknowledged = acked,
            "not every worker confirmed the new config in time; the rest pick it up when they next read their control queue"
        );
    }
    warn_unverified(&new);
    *current = new;
    tracing::info!(path = %path.display(), "config reloaded");
    Ok(())
}

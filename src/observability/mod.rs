//! What operators see: metrics, latency reports, access and audit logs,
//! trace context, and the operational log.
//!
//! - `metrics.rs`: metric names, per-worker counters, Prometheus rendering.
//! - `latency.rs`: per-route `hdrhistogram` recordings, JSON and `.hgrm`.
//! - `access_log.rs`: access and audit line formatting (JSON, no secrets).
//! - `log_stream.rs`: the non-blocking path from workers to stdout/files.
//! - `trace_context.rs`: W3C `traceparent` validation and generation.
//! - this file: [`Logs`] (both log streams of the process) and the
//!   operational log (`tracing`, to stderr).
//!
//! The hot path only touches per-worker state: counters in `Cell`s, a
//! latency histogram, a log batch buffer. Everything is gathered when
//! someone asks (a Prometheus scrape, `/stats/latency`) or when a batch is
//! full, never per request across cores.

pub mod access_log;
pub mod latency;
pub mod log_stream;
pub mod metrics;
pub mod trace_context;

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogConfig, LogFormat};
use log_stream::{Counters, Destination, LogKind, Writer};

/// Installs the global subscriber. Logs go to stderr.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process's access and audit logs: one writer per distinct
/// destination, shared when both logs go to the same place.
pub struct Logs {
    pub access: Option<Arc<Writer>>,
    pub audit: Option<Arc<Writer>>,
    pub counters: Arc<Counters>,
    /// Destinations as started; they change only on restart.
    pub destinations: (Option<Destination>, Option<Destination>),
}

impl Logs {
    /// Opens the configured destinations and starts their writers.
    ///
    /// # Errors
    /// A log file cannot be opened.
    pub fn start(config: &Config) -> std::io::Result<Logs> {
        let counters = Arc::new(Counters::default());
        let access_dest = config.access_log.destination.clone();
        let audit_dest = config.audit_log.clone();
        let access = match &access_dest {
            Some(d) => Some(Arc::new(Writer::start(
                d.clone(),
                config.access_log.queue,
                counters.clone(),
            )?)),
            None => None,
        };
        let audit = match (&audit_dest, &access) {
            (Some(d), Some(shared)) if Some(d) == access_dest.as_ref() => Some(shared.clone()),
            (Some(d), _) => Some(Arc::new(Writer::start(d.clone(), 1024, counters.clone())?)),
            (None, _) => None,
        };
        Ok(Logs {
            access,
            audit,
            counters,
            destinations: (access_dest, audit_dest),
        })
    }

    /// Writes an audit event from a non-worker thread. `fields` appends
    /// `,"key":value` pairs (see `access_log::field_str`).
    pub fn audit(&self, event: &str, fields: impl FnOnce(&mut Vec<u8>)) {
        let Some(w) = &self.audit else { return };
        let mut line = Vec::with_capacity(256);
        access_log::audit_start(&mut line, &access_log::Clock::default(), event);
        fields(&mut line);
        line.extend_from_slice(b"}\n");
        w.line(LogKind::Audit, line);
    }

    /// SIGUSR1: reopen file destinations.
    pub fn reopen(&self) {
        for w in [&self.access, &self.audit].into_iter().flatten() {
            w.reopen();
        }
    }

    /// Writes what is queued (bounded in time) once the workers are gone.
    pub fn close(&self) {
        for w in [&self.access, &self.audit].into_iter().flatten() {
            w.close(Duration::from_secs(2));
        }
    }

    /// `(log, written, dropped)` for the metrics.
    pub fn figures(&self) -> Vec<(&'static str, u64, u64)> {
        [LogKind::Access, LogKind::Audit]
            .into_iter()
            .map(|k| {
                (
                    k.name(),
                    self.counters.written[k as usize].load(Ordering::Relaxed),
                    self.counters.dropped[k as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

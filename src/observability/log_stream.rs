//! Log streams: how access and audit lines get from a worker to stdout or a
//! file without a worker ever waiting on the disk or a pipe.
//!
//! ```text
//! worker: format line into its own batch buffer (no lock, no syscall)
//!     -> batch full or flush tick: try_send(batch) to the writer's bounded queue
//!        (queue full: the batch's lines are dropped and counted)
//! writer thread (one per destination): write(2) the batch, hand the empty
//!     buffer back to the worker that sent it (no allocation in steady state)
//! ```
//!
//! SIGUSR1 reopens file destinations (for logrotate): the control thread
//! sets a flag, the writer reopens before its next write. Threads other than
//! workers (admin, control) send single lines through the same queue.
//!
//! A destination shared by both logs gets one writer, so lines never
//! interleave mid-line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Where a log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Destination {
    pub fn describe(&self) -> String {
        match self {
            Destination::Stdout => "stdout".into(),
            Destination::Stderr => "stderr".into(),
            Destination::File(p) => p.display().to_string(),
        }
    }
}

/// The two logs; indexes [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    Access = 0,
    Audit = 1,
}

impl LogKind {
    pub fn name(self) -> &'static str {
        match self {
            LogKind::Access => "access",
            LogKind::Audit => "audit",
        }
    }
}

/// Lines written and dropped per log. Written by the writer thread and, only
/// when lines are dropped, by the producer that dropped them.
#[derive(Default)]
pub struct Counters {
    pub written: [AtomicU64; 2],
    pub dropped: [AtomicU64; 2],
}

impl Counters {
    fn dropped(&self, kind: LogKind, lines: u64) {
        self.dropped[kind as usize].fetch_add(lines, Ordering::Relaxed);
    }
}

enum Message {
    Batch {
        kind: LogKind,
        buf: Vec<u8>,
        lines: u64,
        /// Where the emptied buffer goes back to (a worker's sink).
        back: Option<SyncSender<Vec<u8>>>,
    },
    /// Wakes the writer to reopen its file.
    Reopen,
}

/// One destination's queue and writer thread.
pub struct Writer {
    /// Taken out by [`Writer::close`]; worker sinks hold their own clones.
    tx: std::sync::Mutex<Option<SyncSender<Message>>>,
    reopen: Arc<AtomicBool>,
    counters: Arc<Counters>,
    done: std::sync::Mutex<Option<Receiver<()>>>,
}

impl Writer {
    /// Opens the destination and starts its writer thread; `queue` batches
    /// may wait before producers start dropping.
    ///
    /// # Errors
    /// The file cannot be opened for appending, or the thread cannot start.
    pub fn start(
        destination: Destination,
        queue: usize,
        counters: Arc<Counters>,
    ) -> io::Result<Self> {
        let mut out = Output::open(&destination)?;
        let (tx, rx) = mpsc::sync_channel::<Message>(queue.max(1));
        let (done_tx, done_rx) = mpsc::channel();
        let reopen = Arc::new(AtomicBool::new(false));
        let (flag, thread_counters) = (reopen.clone(), counters.clone());
        std::thread::Builder::new()
            .name("ringgate-log".into())
            .spawn(move || {
                let mut failing = false;
                for message in rx {
                    if flag.swap(false, Ordering::AcqRel) {
                        match Output::open(&destination) {
                            Ok(o) => out = o,
                            Err(e) => tracing::error!(destination = %destination.describe(), error = %e, "cannot reopen log file; writing to the old one"),
                        }
                    }
                    let Message::Batch { kind, mut buf, lines, back } = message else {
                        continue;
                    };
                    match out.write_all(&buf) {
                        Ok(()) => {
                            failing = false;
                            thread_counters.written[kind as usize].fetch_add(lines, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(destination = %destination.describe(), error = %e, "log write failed; lines are dropped until it works again");
                            }
                            failing = true;
                            thread_counters.dropped(kind, lines);
                        }
                    }
                    buf.clear();
                    if let Some(back) = back {
                        let _ = back.try_send(buf);
                    }
                }
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            tx: std::sync::Mutex::new(Some(tx)),
            reopen,
            counters,
            done: std::sync::Mutex::new(Some(done_rx)),
        })
    }

    /// Sends one complete line (ending in `\n`) from a non-worker thread.
    pub fn line(&self, kind: LogKind, line: Vec<u8>) {
        let message = Message::Batch {
            kind,
            buf: line,
            lines: 1,
            back: None,
        };
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().is_some_and(|tx| tx.try_send(message).is_ok()),
            Err(_) => false,
        };
        if !sent {
            self.counters.dropped(kind, 1);
        }
    }

    /// Asks the writer to reopen its file before the next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                let _ = tx.try_send(Message::Reopen);
            }
        }
    }

    /// Stops taking lines from non-worker threads and waits up to `timeout`
    /// for the writer to write what is queued. Call after the workers (and
    /// their sinks) are gone; a destination that blocks forever must not
    /// hold up exit, hence the timeout.
    pub fn close(&self, timeout: Duration) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            let _ = done.recv_timeout(timeout);
        }
    }

    /// A batching sink for one worker; `None` once the writer is closed.
    pub fn sink(&self, kind: LogKind, batch_bytes: usize) -> Option<Sink> {
        let tx = self.tx.lock().ok()?.clone()?;
        // The worker's spare buffers: at most this many come back.
        let (back, spare) = mpsc::sync_channel(4);
        Some(Sink {
            tx,
            counters: self.counters.clone(),
            kind,
            buf: Vec::with_capacity(batch_bytes),
            lines: 0,
            batch_bytes,
            back,
            spare,
        })
    }
}

enum Output {
    Stdout(io::Stdout),
    Stderr(io::Stderr),
    File(File),
}

impl Output {
    fn open(d: &Destination) -> io::Result<Output> {
        Ok(match d {
            Destination::Stdout => Output::Stdout(io::stdout()),
            Destination::Stderr => Output::Stderr(io::stderr()),
            Destination::File(p) => Output::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            ),
        })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout(s) => s.lock().write_all(buf),
            Output::Stderr(s) => s.lock().write_all(buf),
            Output::File(f) => f.write_all(buf),
        }
    }
}

/// A worker's end of a log: lines collect in a buffer that goes to the
/// writer whole. Owned by one worker; nothing in it is shared per line.
pub struct Sink {
    tx: SyncSender<Message>,
    counters: Arc<Counters>,
    kind: LogKind,
    buf: Vec<u8>,
    lines: u64,
    batch_bytes: usize,
    back: SyncSender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
}

impl Sink {
    /// The buffer to format a line into; call [`Sink::end_line`] after.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Ends the line written into [`Sink::buf`]; hands the batch over once
    /// it is full.
    pub fn end_line(&mut self) {
        self.buf.push(b'\n');
        self.lines += 1;
        if self.buf.len() >= self.batch_bytes {
            self.flush();
        }
    }

    /// Hands the lines collected so far to the writer, or drops and counts
    /// them when its queue is full.
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.batch_bytes));
        let buf = std::mem::replace(&mut self.buf, next);
        let message = Message::Batch {
            kind: self.kind,
            buf,
            lines: self.lines,
            back: Some(self.back.clone()),
        };
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => {
                self.counters.dropped(self.kind, self.lines);
                // Keep the buffer instead of allocating another.
                if let Message::Batch { mut buf, .. } = m {
                    buf.clear();
                    self.buf = buf;
                }
            }
        }
        self.lines = 0;
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_written_or_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let counters = Arc::new(Counters::default());
        // A one-batch queue the writer cannot drain as fast as it fills.
        let writer = Writer::start(Destination::File(path.clone()), 1, counters.clone()).unwrap();
        let mut sink = writer.sink(LogKind::Access, 16).unwrap();
        for _ in 0..10_000 {
            sink.buf().extend_from_slice(b"0123456789abcdef");
            sink.end_line();
        }
        drop(sink);
        writer.close(Duration::from_secs(30));
        let written = counters.written[0].load(Ordering::Relaxed);
        let dropped = counters.dropped[0].load(Ordering::Relaxed);
        assert_eq!(written + dropped, 10_000);
        assert!(dropped > 0, "the queue never filled");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len() as u64, written * 17);
        assert!(writer.sink(LogKind::Access, 16).is_none());
    }
}

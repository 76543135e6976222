//! Cluster mode: rate-limit state shared by every gateway instance through
//! Redis, from one background thread per instance. Workers never touch the
//! network: they keep checking their own tables, and this thread merges what
//! other instances admitted into them.
//!
//! # Protocol
//! Every `sync_interval` the thread takes what this instance's workers
//! admitted (the same per-worker reports the cross-core exchange uses),
//! summed per key, and sends one pipeline:
//!
//! 1. `EVALSHA` of [`SCRIPT`] per chunk of keys: for each key it moves the
//!    key's theoretical arrival time (`tat`, Redis-clock microseconds, the
//!    GCRA state) on by the emission interval times the count, sets the key
//!    to expire when that time passes (a key at rest is a fresh key), and
//!    appends the new times of the chunk to one change stream, tagged with
//!    this instance's id.
//! 2. `TIME`.
//! 3. `XREAD` of the change stream from where this instance last stopped.
//!
//! Entries of other instances become `(key, ahead)` pairs, `ahead` being
//! how far the key's `tat` lies beyond Redis's clock, and every worker moves
//! its own slot for the key to at least `now + ahead`. Taking the later of
//! two times never counts a request twice, so the local cross-core exchange
//! and this one can both run. Redis keys hold only the 64-bit key hash (no
//! client address), and the stream is trimmed to [`RETENTION_MS`].
//!
//! # Failure
//! A connect, a script or a read that fails or exceeds `timeout` marks the
//! store down: the connection is dropped, the admissions of that interval
//! are not shared (they were enforced locally), and the next interval
//! connects again. With `failure = "open"` workers keep their per-instance
//! limits; with `failure = "closed"` they answer 503 on every rate-limited
//! route until a sync succeeds again. Transitions are logged and audited;
//! [`StoreFigures`] feeds the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use redis::Value;

use super::Deltas;

/// `[rate_limit.redis]` as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`; may
    /// hold a password, so it is never logged.
    pub url: String,
    pub failure: Failure,
    /// Bound on connecting and on one sync's round trip.
    pub timeout: Duration,
    /// Prefix of every key ringgate writes.
    pub key_prefix: String,
}

/// What workers do while the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Keep enforcing the limits per instance.
    Open,
    /// Answer 503 on routes with rate limits.
    Closed,
}

/// What the sync thread tells the workers.
pub enum StoreReport {
    /// Other instances' admissions: `(key, nanoseconds its tat lies ahead)`.
    Ahead(Arc<Vec<(u64, u64)>>),
    /// Refuse rate-limited requests (fail closed) or stop refusing.
    Refuse(bool),
}

/// Figures for the metrics, written by the sync thread only.
#[derive(Debug, Default)]
pub struct StoreFigures {
    pub configured: AtomicBool,
    pub up: AtomicBool,
    pub syncs: AtomicU64,
    pub errors: AtomicU64,
    /// Keys pushed (one per key per interval).
    pub pushed: AtomicU64,
    /// Key updates received from other instances.
    pub received: AtomicU64,
    /// Key updates not shared: the store was down or the interval's batch
    /// was full.
    pub dropped: AtomicU64,
}

/// A copy of [`StoreFigures`] for one scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreSnapshot {
    pub configured: bool,
    pub up: bool,
    pub syncs: u64,
    pub errors: u64,
    pub pushed: u64,
    pub received: u64,
    pub dropped: u64,
}

impl StoreFigures {
    pub fn snapshot(&self) -> StoreSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreSnapshot {
            configured: self.configured.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
            syncs: load(&self.syncs),
            errors: load(&self.errors),
            pushed: load(&self.pushed),
            received: load(&self.received),
            dropped: load(&self.dropped),
        }
    }
}

/// Moves each key's `tat` on and records the new times in the stream.
/// KEYS[1] is the stream, KEYS[2..] the limit keys; ARGV[1] this instance's
/// id, ARGV[2] the key prefix length, ARGV[3] the stream retention (ms),
/// ARGV[4..] the increments (µs), one per limit key.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local plen = tonumber(ARGV[2])
local out = {}
for i = 2, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  tat = tat + tonumber(ARGV[i + 2])
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  out[#out + 1] = string.sub(KEYS[i], plen + 1) .. ' ' .. string.format('%.0f', tat)
end
local minid = string.format('%.0f', math.floor(now / 1000) - tonumber(ARGV[3]))
redis.call('XADD', KEYS[1], 'MINID', '~', minid, '*', 'i', ARGV[1], 'd', table.concat(out, '\n'))
return #out
";

/// How long the change stream keeps entries. An instance that falls further
/// behind than this (or starts) reads from the oldest kept entry; entries
/// carry absolute times, so old ones are still right, only incomplete.
pub const RETENTION_MS: u64 = 10_000;
/// Keys per script call, so one call never holds Redis for long.
const CHUNK: usize = 512;
/// Keys shared per interval; beyond, admissions are enforced locally only.
const MAX_KEYS: usize = 65_536;
/// Stream entries read per interval.
const READ_COUNT: usize = 256;

/// The sync thread's state.
pub struct Store {
    config: StoreConfig,
    interval: Duration,
    client: redis::Client,
    figures: Arc<StoreFigures>,
    /// Identifies this instance's stream entries.
    instance: String,
    session: Option<Session>,
    /// Increments to push, nanoseconds per key.
    pending: HashMap<u64, u64>,
    refusing: bool,
    /// Whether the last sync failed (for logging transitions only).
    down: bool,
}

struct Session {
    conn: redis::Connection,
    sha: String,
    last_id: String,
}

/// Why a URL is not usable; checked at config load, without connecting.
pub fn check_url(url: &str) -> Result<(), String> {
    match redis::Client::open(url) {
        Ok(_) if url.starts_with("rediss") || url.starts_with("valkeys") => {
            Err("TLS to Redis is not supported yet; use redis:// or unix://".into())
        }
        Ok(_) => Ok(()),
        // The parser's message never echoes the URL (it may hold a password).
        Err(e) => Err(format!("not a Redis URL ({})", e.kind_name())),
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        if self.is_timeout() {
            "timed out".into()
        } else if self.is_connection_refusal() {
            "connection refused".into()
        } else if let Some(code) = self.code() {
            format!("server error {code}")
        } else {
            format!("{:?}", self.kind())
        }
    }
}

impl Store {
    /// # Errors
    /// When the URL does not parse (config validation already checked it).
    pub fn new(
        config: StoreConfig,
        interval: Duration,
        figures: Arc<StoreFigures>,
    ) -> Result<Store, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("rate_limit.redis.url: {}", e.kind_name()))?;
        figures.configured.store(true, Ordering::Relaxed);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let instance = format!(
            "{:016x}",
            crate::upstream::balancer::hash(format!("{}:{seed}", std::process::id()).as_bytes())
        );
        Ok(Store {
            config,
            interval,
            client,
            figures,
            instance,
            session: None,
            pending: HashMap::new(),
            refusing: false,
            down: false,
        })
    }

    /// Where the store is, for log lines (never the URL: it may hold a
    /// password).
    pub fn target(&self) -> String {
        self.client.get_connection_info().addr().to_string()
    }

    /// Adds one worker's report to the next push.
    fn add(&mut self, deltas: &Deltas) {
        for &(key, emission, count) in deltas.iter() {
            let inc = emission.saturating_mul(count);
            if let Some(total) = self.pending.get_mut(&key) {
                *total = total.saturating_add(inc);
            } else if self.pending.len() < MAX_KEYS {
                self.pending.insert(key, inc);
            } else {
                self.figures.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Syncs every interval until every worker has hung up.
    pub fn run(mut self, reports: mpsc::Receiver<Deltas>, publish: impl Fn(StoreReport)) {
        let mut next = Instant::now();
        loop {
            self.sync(&publish);
            next += self.interval;
            let now = Instant::now();
            if next < now {
                next = now + self.interval;
            }
            loop {
                match reports.recv_timeout(next.saturating_duration_since(Instant::now())) {
                    Ok(d) => self.add(&d),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// One interval: connect when needed, push, read; publish the outcome.
    pub fn sync(&mut self, publish: &impl Fn(StoreReport)) {
        let result = match self.session.take() {
            Some(s) => Ok(s),
            None => self.connect(),
        }
        .and_then(|mut s| self.exchange(&mut s).map(|ahead| (s, ahead)));
        match result {
            // Workers hear first, figures move after: a scrape that sees a
            // figure reaches every worker after the message it stands for.
            Ok((session, ahead)) => {
                self.session = Some(session);
                if self.refusing {
                    self.refusing = false;
                    publish(StoreReport::Refuse(false));
                }
                let received = ahead.len() as u64;
                if received > 0 {
                    publish(StoreReport::Ahead(Arc::new(ahead)));
                }
                if self.down {
                    self.down = false;
                    tracing::info!(store = %self.target(), "rate-limit store reachable again");
                }
                self.figures.received.fetch_add(received, Ordering::Relaxed);
                self.figures.syncs.fetch_add(1, Ordering::Relaxed);
                self.figures.up.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                if self.config.failure == Failure::Closed && !self.refusing {
                    self.refusing = true;
                    publish(StoreReport::Refuse(true));
                }
                let lost = self.pending.len() as u64;
                self.pending.clear();
                self.figures.dropped.fetch_add(lost, Ordering::Relaxed);
                self.figures.errors.fetch_add(1, Ordering::Relaxed);
                self.figures.up.store(false, Ordering::Relaxed);
                if !self.down {
                    self.down = true;
                    tracing::warn!(
                        store = %self.target(),
                        error = %e.kind_name(),
                        failure = ?self.config.failure,
                        "rate-limit store unreachable; limits apply per instance until it returns"
                    );
                }
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<Session> {
        let mut conn = self
            .client
            .get_connection_with_timeout(self.config.timeout)?;
        conn.set_read_timeout(Some(self.config.timeout))?;
        conn.set_write_timeout(Some(self.config.timeout))?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut conn)?;
        Ok(Session {
            conn,
            sha,
            // Everything the stream still keeps: entries carry absolute
            // times, so a new instance starts with the others' state.
            last_id: "0".into(),
        })
    }

    fn stream_key(&self) -> String {
        format!("{}changes", self.config.key_prefix)
    }

    /// Pushes the pending increments and reads other instances' entries.
    fn exchange(&mut self, s: &mut Session) -> redis::RedisResult<Vec<(u64, u64)>> {
        let stream = self.stream_key();
        let prefix = &self.config.key_prefix;
        let pending: Vec<(u64, u64)> = self.pending.drain().collect();
        let mut pipe = redis::pipe();
        for chunk in pending.chunks(CHUNK) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(&s.sha)
                .arg(chunk.len() + 1)
                .arg(&stream);
            for (key, _) in chunk {
                cmd.arg(format!("{prefix}{key:016x}"));
            }
            cmd.arg(&self.instance).arg(prefix.len()).arg(RETENTION_MS);
            for (_, ns) in chunk {
                cmd.arg(ns.div_ceil(1000));
            }
            cmd.ignore();
        }
        pipe.cmd("TIME")
            .cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&s.last_id);
        let (time, read): (Vec<u64>, Value) = pipe.query(&mut s.conn)?;
        self.figures
            .pushed
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        let now_us = match time.as_slice() {
            [secs, micros] => secs * 1_000_000 + micros,
            _ => return Err(malformed("TIME")),
        };
        let mut ahead = Vec::new();
        for (id, instance, data) in stream_entries(&read).ok_or_else(|| malformed("XREAD"))? {
            s.last_id = id;
            if instance != self.instance.as_bytes() {
                parse_changes(data, now_us, &mut ahead);
            }
        }
        Ok(ahead)
    }
}

fn malformed(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        what.to_string(),
    ))
}

/// One change-stream entry: `(id, instance, data)`.
type Entry<'a> = (String, &'a [u8], &'a [u8]);

/// The entries of an `XREAD` reply on one stream (`None` when the reply has
/// another shape; an empty list when nil).
fn stream_entries(read: &Value) -> Option<Vec<Entry<'_>>> {
    let streams = match read {
        Value::Nil => return Some(Vec::new()),
        Value::Array(streams) => streams,
        Value::Map(pairs) => {
            return pairs
                .first()
                .map_or(Some(Vec::new()), |(_, entries)| entries_of(entries))
        }
        _ => return None,
    };
    match streams.first() {
        None => Some(Vec::new()),
        Some(Value::Array(pair)) if pair.len() == 2 => entries_of(&pair[1]),
        Some(_) => None,
    }
}

fn entries_of(entries: &Value) -> Option<Vec<Entry<'_>>> {
    let Value::Array(entries) = entries else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return None;
        };
        let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
            return None;
        };
        let mut instance: &[u8] = b"";
        let mut data: &[u8] = b"";
        for pair in fields.chunks(2) {
            if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                match name.as_slice() {
                    b"i" => instance = value,
                    b"d" => data = value,
                    _ => {}
                }
            }
        }
        out.push((String::from_utf8_lossy(id).into_owned(), instance, data));
    }
    Some(out)
}

/// Appends `(key, ahead ns)` for every line `"<hex key> <tat µs>"` whose
/// time lies beyond `now_us`; other lines are skipped.
fn parse_changes(data: &[u8], now_us: u64, out: &mut Vec<(u64, u64)>) {
    for line in data.split(|&b| b == b'\n') {
        let text = std::str::from_utf8(line).unwrap_or("");
        let Some((key, tat)) = text.split_once(' ') else {
            continue;
        };
        let (Ok(key), Ok(tat)) = (u64::from_str_radix(key, 16), tat.parse::<u64>()) else {
            continue;
        };
        if tat > now_us {
            out.push((key, (tat - now_us).saturating_mul(1000)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_lines_become_times_ahead() {
        let mut out = Vec::new();
        parse_changes(
            b"00000000000000ff 1500\n0000000000000001 900\nbad line\nzz 5\n",
            1000,
            &mut out,
        );
        assert_eq!(out, vec![(255, 500_000)], "past times and junk skipped");
    }

    #[test]
    fn stream_replies_of_both_protocols() {
        let entry = |id: &str, i: &str, d: &str| {
            Value::Array(vec![
                Value::BulkString(id.into()),
                Value::Array(vec![
                    Value::BulkString(b"i".to_vec()),
                    Value::BulkString(i.into()),
                    Value::BulkString(b"d".to_vec()),
                    Value::BulkString(d.into()),
                ]),
            ])
        };
        let entries = Value::Array(vec![entry("1-0", "a", "x"), entry("2-0", "b", "y")]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            entries.clone(),
        ])]);
        let resp3 = Value::Map(vec![(Value::BulkString(b"s".to_vec()), entries)]);
        for reply in [resp2, resp3] {
            let got = stream_entries(&reply).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[1], ("2-0".to_string(), &b"b"[..], &b"y"[..]));
        }
        assert!(stream_entries(&Value::Nil).unwrap().is_empty());
        assert!(stream_entries(&Value::Int(3)).is_none());
    }

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert!(check_url("redis://:secret@127.0.0.1:6379/0").is_ok());
        assert!(check_url("unix:///run/redis.sock").is_ok());
        let e = check_url("http://:secret@host").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(check_url("rediss://host").is_err());
    }
}

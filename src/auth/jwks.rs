//! Remote keys: JWKS URLs and OIDC discovery, fetched by one background
//! thread and handed to the workers as immutable key sets.
//!
//! At start the control thread fetches every remote issuer's keys once
//! (the gateway reports not-ready meanwhile); then this thread refreshes
//! each set on its cache lifetime (`Cache-Control: max-age`, clamped to
//! 1 minute .. 1 day, else the issuer's `refresh`), and refetches early when
//! a worker meets a token naming an unknown `kid`, at most once per
//! `refetch_min_interval` per issuer, so a flood of random kids cannot
//! hammer the issuer. A failed fetch keeps the last good keys (with a
//! warning) and is retried after `refetch_min_interval`. Requests never
//! wait on the network: a token whose key is not there yet is refused, and
//! accepted once the refetch has landed.

use std::io::Read as _;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::jwt::{parse_jwks, KeySet};

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT: u64 = 1 << 20;

/// Where one issuer's remote keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    pub issuer: Box<str>,
    pub source: KeySource,
    /// `iss` the discovery document must name, when configured.
    pub expected_issuer: Option<String>,
    /// Refresh period when the response sets no usable max-age.
    pub refresh: Duration,
    /// Least time between two fetches of one issuer (unknown-kid refetches,
    /// retries after a failure).
    pub refetch_min: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Jwks(String),
    /// An issuer URL: `<url>/.well-known/openid-configuration` names the
    /// JWKS.
    Discovery(String),
}

/// Messages to the fetch thread.
pub enum FetchMsg {
    /// The sources of a reloaded config.
    Sources(Vec<RemoteSource>),
    /// A worker saw a token naming a key the issuer's set lacks.
    Refetch(Box<str>),
}

/// Per-issuer figures for the metrics: `(fetches ok, fetches failed, keys)`.
pub type JwksFigures = super::NamedFigures;

struct Entry {
    src: RemoteSource,
    keys: Option<Arc<KeySet>>,
    due: Instant,
    last_attempt: Option<Instant>,
}

/// The fetch thread's state.
pub struct Fetcher {
    entries: Vec<Entry>,
    figures: Arc<JwksFigures>,
}

impl Fetcher {
    pub fn new(sources: Vec<RemoteSource>, figures: Arc<JwksFigures>) -> Fetcher {
        let now = Instant::now();
        Fetcher {
            entries: sources
                .into_iter()
                .map(|src| Entry {
                    src,
                    keys: None,
                    due: now,
                    last_attempt: None,
                })
                .collect(),
            figures,
        }
    }

    /// Fetches every source that is due; publishes new key sets.
    pub fn fetch_due(&mut self, publish: &impl Fn(&str, Arc<KeySet>)) {
        let now = Instant::now();
        for i in 0..self.entries.len() {
            if self.entries[i].due <= now {
                self.fetch(i, publish);
            }
        }
    }

    fn fetch(&mut self, i: usize, publish: &impl Fn(&str, Arc<KeySet>)) {
        let e = &mut self.entries[i];
        let started = Instant::now();
        e.last_attempt = Some(started);
        let result = fetch_keys(&e.src);
        let mut figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        let f = figures.entry(e.src.issuer.clone()).or_default();
        match result {
            Ok((keys, max_age)) => {
                f.0 += 1;
                f.2 = keys.keys.len() as u64;
                let keys = Arc::new(keys);
                e.keys = Some(keys.clone());
                let life = max_age.map_or(e.src.refresh, |a| {
                    a.clamp(Duration::from_secs(60), Duration::from_secs(86_400))
                });
                e.due = started + life;
                tracing::info!(issuer = %e.src.issuer, keys = keys.keys.len(), "signing keys loaded");
                publish(&e.src.issuer, keys);
            }
            Err(why) => {
                f.1 += 1;
                e.due = started + e.src.refetch_min;
                tracing::warn!(
                    issuer = %e.src.issuer,
                    error = %why,
                    kept = e.keys.as_ref().map_or(0, |k| k.keys.len()),
                    "fetching signing keys failed; the last good keys keep serving"
                );
            }
        }
    }

    /// Serves refetch requests and refreshes until every sender is gone.
    pub fn run(mut self, rx: mpsc::Receiver<FetchMsg>, publish: impl Fn(&str, Arc<KeySet>)) {
        loop {
            let next = self.entries.iter().map(|e| e.due).min();
            let wait = next.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(FetchMsg::Refetch(name)) => {
                    let now = Instant::now();
                    if let Some(i) = self.entries.iter().position(|e| e.src.issuer == name) {
                        let e = &mut self.entries[i];
                        let allowed = e
                            .last_attempt
                            .is_none_or(|t| now.duration_since(t) >= e.src.refetch_min);
                        if allowed {
                            self.fetch(i, &publish);
                        } else {
                            // At most one early fetch per interval.
                            let earliest = e.last_attempt.map_or(now, |t| t + e.src.refetch_min);
                            e.due = e.due.min(earliest);
                        }
                    }
                }
                Ok(FetchMsg::Sources(sources)) => self.replace(sources, &publish),
                Err(mpsc::RecvTimeoutError::Timeout) => self.fetch_due(&publish),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Installs a reloaded config's sources: unchanged ones keep their keys
    /// and schedule, new or changed ones are fetched now.
    fn replace(&mut self, sources: Vec<RemoteSource>, publish: &impl Fn(&str, Arc<KeySet>)) {
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.entries);
        self.entries = sources
            .into_iter()
            .map(|src| match old.iter().position(|e| e.src == src) {
                Some(i) => old.swap_remove(i),
                None => Entry {
                    src,
                    keys: None,
                    due: now,
                    last_attempt: None,
                },
            })
            .collect();
        self.fetch_due(publish);
    }
}

/// Fetches one source: the key set and the response's max-age.
fn fetch_keys(src: &RemoteSource) -> Result<(KeySet, Option<Duration>), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(src.timeout))
        .http_status_as_error(true)
        .build()
        .into();
    let jwks_url = match &src.source {
        KeySource::Jwks(url) => url.clone(),
        KeySource::Discovery(issuer) => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let (doc, _) = get(&agent, &url)?;
            let doc: serde_json::Value = serde_json::from_slice(&doc)
                .map_err(|_| format!("{url}: not a JSON discovery document"))?;
            if let Some(want) = &src.expected_issuer {
                if doc.get("issuer").and_then(|v| v.as_str()) != Some(want.as_str()) {
                    return Err(format!("{url}: the document names another issuer"));
                }
            }
            match doc.get("jwks_uri").and_then(|v| v.as_str()) {
                Some(u) if u.starts_with("https://") || u.starts_with("http://") => u.to_string(),
                _ => return Err(format!("{url}: no http(s) jwks_uri")),
            }
        }
    };
    let (body, max_age) = get(&agent, &jwks_url)?;
    let (keys, _skipped) = parse_jwks(&body).map_err(|e| format!("{jwks_url}: {e}"))?;
    if keys.is_empty() {
        return Err(format!("{jwks_url}: no usable signing key"));
    }
    Ok((KeySet::new(keys), max_age))
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
    let mut response = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let max_age = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{url}: {e}"))?;
    if body.len() as u64 > MAX_DOCUMENT {
        return Err(format!("{url}: larger than {MAX_DOCUMENT} bytes"));
    }
    Ok((body, max_age))
}

/// `max-age` of a Cache-Control value.
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}

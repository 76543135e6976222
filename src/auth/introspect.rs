//! OAuth2 token introspection (RFC 7662) for opaque tokens.
//!
//! A worker meeting a token its cache does not know hands it to a small
//! pool of introspection threads (blocking HTTP calls, one keep-alive agent
//! shared by the pool) and awaits the answer; the connection waits, the
//! worker's other connections do not. Answers are cached per worker:
//! active tokens until their `exp`, never longer than the endpoint's
//! `cache_max_ttl`; inactive ones for `negative_ttl`. A failed call (down,
//! timeout, non-2xx, not JSON) is not cached and the request gets 503.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value};

/// Largest introspection response read.
const MAX_RESPONSE: u64 = 64 << 10;

/// `[[auth.introspection]]`: one introspection endpoint.
pub struct Endpoint {
    pub name: Box<str>,
    /// Stable across reloads while name, URL and client stay the same, so
    /// cached answers survive a reload that did not change the endpoint.
    pub id: u64,
    pub url: String,
    /// `Basic <base64(client_id:client_secret)>` (RFC 6749 2.3.1).
    authorization: String,
    pub timeout: Duration,
    pub max_ttl: u64,
    pub negative_ttl: u64,
    pub max_token_bytes: usize,
    pub groups_claim: Box<str>,
}

impl std::fmt::Debug for Endpoint {
    /// The client secret stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Endpoint {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        url: &str,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
        max_ttl: Duration,
        negative_ttl: Duration,
        max_token_bytes: usize,
        groups_claim: &str,
    ) -> Endpoint {
        let credentials = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
        let mut id = 0xcbf2_9ce4_8422_2325u64;
        for part in [name, url, client_id] {
            for &b in part.as_bytes().iter().chain(b"\0") {
                id = (id ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Endpoint {
            name: name.into(),
            id,
            url: url.into(),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            timeout,
            max_ttl: max_ttl.as_secs(),
            negative_ttl: negative_ttl.as_secs(),
            max_token_bytes,
            groups_claim: groups_claim.into(),
        }
    }
}

/// What the endpoint said about a token.
#[derive(Debug)]
pub enum Answer {
    /// `active: true`: the response's members and the second from which
    /// the answer is no longer used.
    Active(Map<String, Value>, u64),
    /// `active: false` (or expired): refused until this second.
    Inactive(u64),
    /// No usable answer; the reason for the audit log.
    Failed(&'static str),
}

/// One token to introspect.
pub struct Job {
    pub endpoint: Arc<Endpoint>,
    pub token: Box<str>,
    /// Seconds since the epoch when the worker asked.
    pub now: u64,
    pub reply: async_channel::Sender<Answer>,
}

/// Per-endpoint figures for the metrics: `(active, inactive, failed)`.
pub type IntrospectFigures = super::NamedFigures;

/// Runs one introspection thread: takes jobs until the channel closes.
pub fn serve(
    jobs: async_channel::Receiver<Job>,
    agent: ureq::Agent,
    figures: Arc<IntrospectFigures>,
) {
    while let Ok(job) = jobs.recv_blocking() {
        if job.reply.is_closed() {
            // The request gave up (timeout, client gone) while queued.
            continue;
        }
        let started = Instant::now();
        let answer = call(&agent, &job);
        {
            let mut f = figures.lock().unwrap_or_else(|p| p.into_inner());
            let e = f.entry(job.endpoint.name.clone()).or_default();
            match &answer {
                Answer::Active(..) => e.0 += 1,
                Answer::Inactive(_) => e.1 += 1,
                Answer::Failed(why) => {
                    e.2 += 1;
                    tracing::warn!(endpoint = %job.endpoint.name, reason = why,
                        elapsed = ?started.elapsed(), "token introspection failed");
                }
            }
        }
        let _ = job.reply.try_send(answer);
    }
}

fn call(agent: &ureq::Agent, job: &Job) -> Answer {
    let ep = &job.endpoint;
    let sent = agent
        .post(&ep.url)
        .header("authorization", &ep.authorization)
        .header("accept", "application/json")
        .config()
        .timeout_global(Some(ep.timeout))
        .build()
        .send_form([("token", &*job.token), ("token_type_hint", "access_token")]);
    let mut response = match sent {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(_)) => return Answer::Failed("introspection_status"),
        Err(ureq::Error::Timeout(_)) => return Answer::Failed("introspection_timeout"),
        Err(_) => return Answer::Failed("introspection_unreachable"),
    };
    let mut body = Vec::new();
    let read = response
        .body_mut()
        .as_reader()
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut body);
    if read.is_err() || body.len() as u64 > MAX_RESPONSE {
        return Answer::Failed("introspection_response");
    }
    judge(&body, job.now, ep)
}

/// The answer an introspection response gives at `now`.
pub fn judge(body: &[u8], now: u64, ep: &Endpoint) -> Answer {
    let Ok(Value::Object(mut members)) = serde_json::from_slice::<Value>(body) else {
        return Answer::Failed("introspection_response");
    };
    let inactive = Answer::Inactive(now.saturating_add(ep.negative_ttl));
    match members.remove("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return inactive,
        _ => return Answer::Failed("introspection_response"),
    }
    let time = |m: &Map<String, Value>, k: &str| match m.get(k) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(()),
    };
    let (Ok(exp), Ok(nbf)) = (time(&members, "exp"), time(&members, "nbf")) else {
        // A malformed time member: trust nothing else in the answer.
        return Answer::Failed("introspection_response");
    };
    if exp.is_some_and(|e| e <= now) || nbf.is_some_and(|n| n > now) {
        return inactive;
    }
    let until = now.saturating_add(ep.max_ttl).min(exp.unwrap_or(u64::MAX));
    Answer::Active(members, until)
}

/// The shared HTTP agent of the pool: pooled keep-alive connections,
/// non-2xx as errors.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(true)
        .max_idle_connections_per_host(16)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint::new(
            "idp",
            "http://127.0.0.1:1/introspect",
            "gate way",
            "s:e&c",
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::from_secs(10),
            8192,
            "groups",
        )
    }

    #[test]
    fn client_credentials_are_form_encoded_then_base64() {
        let ep = endpoint();
        let b64 = ep.authorization.strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(raw, b"gate+way:s%3Ae%26c");
    }

    #[test]
    fn answers_are_bounded_by_exp_and_max_ttl() {
        let ep = endpoint();
        let now = 1_000_000;
        match judge(br#"{"active":true,"exp":1000100,"sub":"u"}"#, now, &ep) {
            Answer::Active(m, until) => {
                assert_eq!(until, 1_000_100);
                assert_eq!(m.get("sub").and_then(Value::as_str), Some("u"));
                assert!(!m.contains_key("active"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(br#"{"active":true}"#, now, &ep),
            Answer::Active(_, 1_000_300)
        ));
        assert!(matches!(
            judge(br#"{"active":false}"#, now, &ep),
            Answer::Inactive(1_000_010)
        ));
        assert!(matches!(
            judge(br#"{"active":true,"exp":999999}"#, now, &ep),
            Answer::Inactive(_)
        ));
        assert!(matches!(
            judge(br#"{"active":true,"nbf":1000001}"#, now, &ep),
            Answer::Inactive(_)
        ));
        for bad in [
            &br#"{"active":"true"}"#[..],
            br#"{"active":true,"exp":"1000100"}"#,
            br#"{}"#,
            br#"[true]"#,
            b"active",
        ] {
            assert!(matches!(judge(bad, now, &ep), Answer::Failed(_)));
        }
    }
}

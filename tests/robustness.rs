//! Mutated traffic through the whole gateway: seeded edits of valid
//! requests from clients, and of valid responses from an upstream. Whatever
//! arrives, the gateway answers with whole, well-framed responses or closes
//! the connection, never hangs, never panics, and keeps serving.
//!
//! The parsers' own mutation tests (unit tests in `src/http`) check spans
//! and partial input; these check every stage behind them (routing, path
//! normalisation, validation, rewriting, body framing both ways) and what
//! the client receives.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};

use crate::common::*;
use crate::mutate::Mutator;

/// Bytes the edits draw from: the ones HTTP framing turns on, and some it
/// must refuse.
const ALPHABET: &[u8] = b"\r\n\r\n :;,/?%#=&.-_+~0129aAfFxzGHPT\t\"\\\x00\x01\x7f\x80\xff";

const REQUEST_CASES: usize = 10_000;
const RESPONSE_CASES: usize = 4_000;

/// Valid requests to mutate: every stage of the config below is reached.
fn request_templates() -> Vec<Vec<u8>> {
    let json = r#"{"name":"lamp","price":3}"#;
    vec![
        b"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: t\r\nUser-Agent: m\r\nAccept: */*\r\n\r\n".to_vec(),
        format!(
            "POST /api/items HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
        .into_bytes(),
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
        b"GET /direct HTTP/1.1\r\nHost: t\r\n\r\nGET /up/./x/../y HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        b"GET http://t/abs/x?q HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody".to_vec(),
        b"GET /up HTTP/1.0\r\nConnection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n".to_vec(),
    ]
}

/// Valid upstream responses to mutate, each followed by a close.
fn response_templates() -> Vec<Vec<u8>> {
    vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;e=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close".to_vec(),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        b"HTTP/1.1 301 Moved\r\nLocation: /x\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]
}

/// The case's mutation of one of `templates`, with one to three edits.
fn mutated(templates: &[Vec<u8>], case: usize) -> Vec<u8> {
    let mut m =
        Mutator::new(0x9e37_79b9_7f4a_7c15 ^ (case as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut raw = templates[case % templates.len()].clone();
    let edits = 1 + m.below(3);
    m.mutate(&mut raw, ALPHABET, edits, true);
    raw
}

/// One response as the client received it.
#[derive(Debug)]
struct Received {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Splits everything a connection received before its end into responses.
/// Each must be whole and framed by exactly one of Content-Length, chunked
/// coding or the close; only the last body may be cut short (the gateway
/// ends a response whose upstream body stopped by closing). Interim
/// responses are dropped.
fn split_responses(mut bytes: &[u8]) -> Result<Vec<Received>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut fields);
        let len = match res.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Err("a response head cut short".into()),
            Err(e) => return Err(format!("a malformed response head ({e})")),
        };
        let status = res.code.unwrap_or(0);
        if !(100..600).contains(&status) {
            return Err(format!("status code {status}"));
        }
        let headers: Vec<(String, Vec<u8>)> = res
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        bytes = &bytes[len..];
        let count = |n: &str| headers.iter().filter(|(h, _)| h == n).count();
        let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
        if lengths + codings > 1 {
            return Err(format!(
                "{lengths} Content-Length and {codings} Transfer-Encoding fields"
            ));
        }
        if (100..200).contains(&status) {
            if lengths + codings > 0 {
                return Err(format!("framing on an interim {status}"));
            }
            continue;
        }
        let mut r = Received {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 204 || status == 304 {
            // No body, whatever the fields say.
        } else if let Some(te) = r.header("transfer-encoding") {
            if te != b"chunked" {
                return Err(format!(
                    "transfer-encoding {:?}",
                    String::from_utf8_lossy(te)
                ));
            }
            match dechunk(bytes)? {
                Some((body, used)) => {
                    r.body = body;
                    bytes = &bytes[used..];
                }
                None => bytes = &[],
            }
        } else if let Some(cl) = r.header("content-length") {
            let n: usize = std::str::from_utf8(cl)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("content-length {:?}", String::from_utf8_lossy(cl)))?;
            let n = n.min(bytes.len());
            r.body = bytes[..n].to_vec();
            bytes = &bytes[n..];
        } else {
            r.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(r);
    }
    Ok(out)
}

/// A chunked body from the start of `bytes`: its data and length, or None
/// when the bytes end inside it (a body cut short). Chunk sizes are
/// strict hex; extensions are refused, since the gateway writes none.
fn dechunk(bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let line = |at: usize| {
        bytes[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| (&bytes[at..at + p], at + p + 2))
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some((size, next)) = line(at) else {
            return Ok(None);
        };
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size {:?}", String::from_utf8_lossy(size)))?;
        at = next;
        if size == 0 {
            // Trailer fields up to the empty line.
            loop {
                let Some((field, next)) = line(at) else {
                    return Ok(None);
                };
                at = next;
                if field.is_empty() {
                    return Ok(Some((body, at)));
                }
                if !field.contains(&b':') {
                    return Err(format!("trailer {:?}", String::from_utf8_lossy(field)));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[at..at + size]);
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// Sends `raw`, ends the sending side, and reads until the gateway closes.
/// A reset fails too: the gateway drains what a client sent before it
/// closes, so its responses are never destroyed in flight.
fn exchange(gw: &Gateway, raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut c = Client::connect(gw.main());
    // The gateway may close before reading everything (a refused head);
    // what it answered is still read below.
    let _ = c.stream.write_all(raw);
    let _ = c.stream.shutdown(Shutdown::Write);
    let mut got = Vec::new();
    match c.stream.read_to_end(&mut got) {
        Ok(_) => Ok(got),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Err(format!(
                "no close within {WAIT:?} after {} bytes",
                got.len()
            ))
        }
        Err(e) => Err(format!("{e} after {} bytes", got.len())),
    }
}

/// No connection's task panicked.
fn no_panics(gw: &Gateway) {
    let m = scrape(gw);
    assert_eq!(
        m.sum("ringgate_connection_panics_total", &[]),
        0.0,
        "{}",
        m.text
    );
}

fn tally(statuses: &mut std::collections::BTreeMap<u16, usize>, r: &[Received]) {
    for x in r {
        *statuses.entry(x.status).or_default() += 1;
    }
}

#[test]
fn mutated_requests_get_whole_responses_or_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("item.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["name"],"properties":{"name":{"type":"string","maxLength":8},"price":{"type":"number"}}}"#,
    )
    .unwrap();
    let templates = request_templates();
    for driver in DRIVERS {
        let up = Upstream::new(Reply::ok("up"));
        let body = format!(
            "[limits]\nmax_request_line = 512\nmax_header_bytes = 4096\nmax_body_bytes = 4096\n\n{}{}
[[routes]]
name = \"direct\"
match = {{ path = \"/direct\", methods = [\"GET\", \"HEAD\"] }}
respond = {{ status = 200, headers = {{ \"content-type\" = \"text/plain\" }}, body = \"direct\" }}

[[routes]]
name = \"api\"
match = {{ segment_prefix = \"/api\" }}
proxy = {{ cluster = \"c\", rewrite_prefix = \"/v1\" }}
max_body_bytes = \"1KiB\"
validate = {{ json_schema = \"{}\" }}
",
            cluster("c", &[&up], ""),
            route_all("c"),
            schema.display()
        );
        let gw = Gateway::start(&config(driver, &body));
        let mut statuses = std::collections::BTreeMap::new();
        for case in 0..REQUEST_CASES {
            let raw = mutated(&templates, case);
            let what = || format!("{driver}, case {case}: {:?}", String::from_utf8_lossy(&raw));
            let got = exchange(&gw, &raw).unwrap_or_else(|e| panic!("{e}; {}", what()));
            let responses = split_responses(&got).unwrap_or_else(|e| {
                panic!(
                    "{e}; {}; received {:?}",
                    what(),
                    String::from_utf8_lossy(&got)
                )
            });
            for r in &responses {
                // The upstream and the direct route answer 200: anything
                // else is the gateway's own error, in its own shape.
                if r.status != 200 {
                    assert!(
                        matches!(
                            r.status,
                            400 | 404 | 405 | 408 | 413 | 414 | 417 | 431 | 501 | 505
                        ),
                        "status {}; {}",
                        r.status,
                        what()
                    );
                    assert_eq!(
                        r.header("content-type"),
                        Some(&b"application/json"[..]),
                        "{}",
                        what()
                    );
                    let id = r
                        .header("x-request-id")
                        .unwrap_or_else(|| panic!("no request id; {}", what()));
                    let text = String::from_utf8_lossy(&r.body);
                    assert!(text.starts_with(r#"{"error":""#), "{text}; {}", what());
                    assert!(
                        text.contains(&*String::from_utf8_lossy(id)),
                        "{text}; {}",
                        what()
                    );
                }
            }
            tally(&mut statuses, &responses);
        }
        assert_eq!(get(gw.main(), "/direct").status, 200);
        no_panics(&gw);
        // The mutations reach both the upstream and the refusals.
        let ok = statuses.get(&200).copied().unwrap_or(0);
        let refused = statuses.get(&400).copied().unwrap_or(0);
        assert!(
            ok > REQUEST_CASES / 8 && refused > REQUEST_CASES / 10,
            "{driver}: {statuses:?}"
        );
        assert!(
            up.request_count() > REQUEST_CASES / 8,
            "{driver}: {statuses:?}"
        );
    }
}

#[test]
fn mutated_upstream_responses_reach_clients_well_framed_or_as_502() {
    let templates = Arc::new(response_templates());
    for driver in DRIVERS {
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let up = {
            let (sent, templates) = (sent.clone(), templates.clone());
            Upstream::with(move |_| {
                let mut sent = sent.lock().unwrap();
                let raw = mutated(&templates, sent.len());
                sent.push(raw.clone());
                Reply::RawThenClose(raw)
            })
        };
        let body = format!("{}{}", cluster("c", &[&up], ""), route_all("c"));
        let gw = Gateway::start(&config(driver, &body));
        let mut statuses = std::collections::BTreeMap::new();
        for case in 0..RESPONSE_CASES {
            let first = sent.lock().unwrap().len();
            let what = || {
                let sent = sent.lock().unwrap();
                let upstream: Vec<_> = sent[first..]
                    .iter()
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .collect();
                format!("{driver}, case {case}, upstream sent {upstream:?}")
            };
            let got = exchange(
                &gw,
                b"GET /r HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .unwrap_or_else(|e| panic!("{e}; {}", what()));
            let responses = split_responses(&got).unwrap_or_else(|e| {
                panic!(
                    "{e}; {}; received {:?}",
                    what(),
                    String::from_utf8_lossy(&got)
                )
            });
            assert_eq!(
                responses.len(),
                1,
                "one response to one request; {}; received {:?}",
                what(),
                String::from_utf8_lossy(&got)
            );
            let r = &responses[0];
            // A field the upstream's Connection field names stays at the
            // gateway, whatever else the response holds.
            let named = sent.lock().unwrap()[first..]
                .iter()
                .any(|raw| raw.windows(24).any(|w| w == b"Connection: close, x-hop"));
            if named {
                assert_eq!(r.header("x-hop"), None, "{}", what());
            }
            if r.status == 502 && r.header("content-type") == Some(&b"application/json"[..]) {
                assert!(
                    String::from_utf8_lossy(&r.body).contains(r#""status":502"#),
                    "{}",
                    what()
                );
            }
            tally(&mut statuses, &responses);
        }
        no_panics(&gw);
        let ok = statuses.get(&200).copied().unwrap_or(0);
        let bad = statuses.get(&502).copied().unwrap_or(0);
        assert!(
            ok > RESPONSE_CASES / 10 && bad > RESPONSE_CASES / 4,
            "{driver}: {statuses:?}"
        );
    }
}

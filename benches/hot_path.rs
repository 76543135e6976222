//! Micro-benchmarks of the request hot path, each racing the naive way of
//! doing the same thing, to back three design decisions:
//!
//! 1. `parse`: parsing the head in place into byte ranges (no allocation per
//!    request) instead of building owned header strings and a map. Raw
//!    `httparse` is shown as the floor: the difference to it is the cost of
//!    ringgate's framing and smuggling checks.
//! 2. `route`: a compiled table (host hash lookup, candidates pre-sorted by
//!    precedence, allocation-free host normalisation) instead of a linear
//!    scan with per-request lowercasing, at 10 and 1,000 routes.
//! 3. `rewrite`: rendering the upstream head straight into a reused buffer
//!    instead of collecting headers into owned strings and `format!`-ing.
//! 4. `ip_filter`: a 100,000-entry block list as sorted merged ranges with
//!    binary search, instead of a linear scan over the CIDRs.
//! 5. `path`: normalising a request path into reused buffers, against the
//!    allocating way (decode to a `String`, split, collect segments, join).
//! 7. `rate_limit`: one GCRA check in the worker's own fixed table (no lock,
//!    no allocation) against a `Mutex<HashMap>` of token buckets, the
//!    shared-state design per-core tables avoid.
//! 6. `json_schema`: the cost of a JSON Schema route per KiB of body (parse
//!    plus validation), against parsing alone, to size `max_body_bytes` on
//!    such routes.
//! 8. `jwt`: a bearer token found in the worker's verified-token cache
//!    against a full verification (RS256, ES256, EdDSA, HS256): what the
//!    cache saves on every request after a client's first.
//! 9. `stage_slot`: running a request's stages (a future the size of
//!    ringgate's, 3.8 KiB) in a slot of the worker's pool, which keeps idle
//!    connections' tasks small without allocating per request, against
//!    boxing the future per request (what a smaller task would otherwise
//!    cost) and against polling it inline in the task (no allocation, but
//!    every idle task carries its size).
//!
//! Run: `cargo bench --bench hot_path`. Results: docs/PERFORMANCE.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::config::Config;
use ringgate::http::head::{parse_request, HeadLimits, RequestHead, RequestView};
use ringgate::http::proxy::{render_request_head, UpstreamHead};
use ringgate::http::response::RequestId;
use ringgate::routing::{Action, ProxyAction, Router};
use ringgate::security::ipset::IpSet;
use ringgate::security::path::normalize;

const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&sort=desc HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiIxMjMifQ.sig\r\n\
Cookie: session=abcdef0123456789; theme=dark\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
Connection: keep-alive\r\n\r\n";

const LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8192,
    max_header_bytes: 32768,
    max_headers: 100,
};

/// The naive way: owned strings in a map.
fn naive_parse(raw: &[u8]) -> (String, String, HashMap<String, String>) {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let method = first.next().unwrap().to_string();
    let target = first.next().unwrap().to_string();
    let mut headers = HashMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (n, v) = line.split_once(':').unwrap();
        headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    (method, target, headers)
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mut head = RequestHead::default();
    g.bench_function("ringgate_strict_in_place", |b| {
        b.iter(|| parse_request(black_box(REQUEST), &LIMITS, &mut head).unwrap())
    });
    g.bench_function("httparse_floor", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(black_box(REQUEST)).unwrap()
        })
    });
    g.bench_function("naive_owned_map", |b| {
        b.iter(|| naive_parse(black_box(REQUEST)))
    });
    g.finish();
}

fn routes_config(n: usize) -> String {
    let mut text = String::from(
        "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nmatch = {{ host = \"h{}.example.com\", segment_prefix = \"/svc{i}\" }}\nproxy = {{ cluster = \"c\" }}\n",
            i % 10
        ));
    }
    text
}

/// The naive table: routes in file order, lowercase per request.
fn naive_find<'a>(
    routes: &'a [(String, String)],
    host: &str,
    path: &str,
) -> Option<&'a (String, String)> {
    let host = host.split(':').next().unwrap().to_lowercase();
    routes
        .iter()
        .find(|(h, p)| *h == host && (path == p || path.starts_with(&format!("{p}/"))))
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10usize, 1000] {
        let router: Router = Config::parse("bench.toml", &routes_config(n))
            .unwrap()
            .router;
        let last = n - 1;
        let raw = format!(
            "GET /svc{last}/items/1 HTTP/1.1\r\nHost: H{}.Example.com\r\n\r\n",
            last % 10
        );
        let mut head = RequestHead::default();
        parse_request(raw.as_bytes(), &LIMITS, &mut head).unwrap();
        let view = RequestView {
            head: &head,
            buf: raw.as_bytes(),
        };
        assert!(router.find(&view).is_some());
        g.bench_function(format!("compiled_{n}"), |b| {
            b.iter(|| router.find(black_box(&view)).is_some())
        });
        let naive: Vec<(String, String)> = (0..n)
            .map(|i| (format!("h{}.example.com", i % 10), format!("/svc{i}")))
            .collect();
        let host = format!("H{}.Example.com", last % 10);
        let path = format!("/svc{last}/items/1");
        assert!(naive_find(&naive, &host, &path).is_some());
        g.bench_function(format!("naive_scan_{n}"), |b| {
            b.iter(|| naive_find(black_box(&naive), black_box(&host), black_box(&path)).is_some())
        });
    }
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("rewrite");
    let mut head = RequestHead::default();
    parse_request(REQUEST, &LIMITS, &mut head).unwrap();
    let view = RequestView {
        head: &head,
        buf: REQUEST,
    };
    let router = Config::parse(
        "bench.toml",
        "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\nmatch = { segment_prefix = \"/api\" }\nproxy = { cluster = \"c\", rewrite_prefix = \"\" }\n",
    )
    .unwrap()
    .router;
    let Action::Proxy(action) = &router.routes()[0].action else {
        unreachable!()
    };
    let action: ProxyAction = action.clone();
    let id = RequestId::from_client(b"0123456789abcdef0123456789abcdef");
    let up = UpstreamHead {
        path: b"/api/v1/items",
        action: &action,
        prefix_len: 4,
        via: false,
        endpoint: SocketAddr::from(([127, 0, 0, 1], 9000)),
        peer: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4)),
        id: &id,
        traceparent: None,
        strip: &[],
        strip_always: &[],
        identity: b"",
        client_cert: b"",
        tls: false,
        strip_cookie: None,
        strip_query: None,
    };
    let mut out = Vec::with_capacity(4096);
    g.bench_function("render_into_reused_buffer", |b| {
        b.iter(|| {
            render_request_head(&mut out, black_box(view), &up);
            out.len()
        })
    });
    g.bench_function("naive_owned_and_format", |b| {
        b.iter(|| {
            let (method, target, headers) = naive_parse(black_box(REQUEST));
            let path = target.strip_prefix("/api").unwrap_or(&target);
            let mut s = format!("{method} {path} HTTP/1.1\r\n");
            for (n, v) in &headers {
                if !["connection", "keep-alive", "x-forwarded-for"].contains(&n.as_str()) {
                    s.push_str(&format!("{n}: {v}\r\n"));
                }
            }
            let xff = headers
                .get("x-forwarded-for")
                .map_or(String::new(), |v| format!("{v}, "));
            s.push_str(&format!(
                "x-forwarded-for: {xff}198.51.100.4\r\nx-request-id: {}\r\n\r\n",
                "0123456789abcdef0123456789abcdef"
            ));
            s.len()
        })
    });
    g.finish();
}

fn block_list() -> Vec<ipnet::IpNet> {
    let mut x: u32 = 0x2545_f491;
    (0..100_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = 24 + (x % 9) as u8;
            ipnet::IpNet::V4(ipnet::Ipv4Net::new(x.into(), len).unwrap().trunc())
        })
        .collect()
}

fn ip_filter(c: &mut Criterion) {
    let nets = block_list();
    let set = IpSet::new(nets.clone());
    let probes: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::V4(i.wrapping_mul(2_654_435_761).into()))
        .collect();
    let mut g = c.benchmark_group("ip_filter_100k");
    let mut i = 0;
    g.bench_function("sorted_ranges", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(set.contains(black_box(probes[i])))
        })
    });
    g.bench_function("naive_linear_scan", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(nets.iter().any(|n| n.contains(&black_box(probes[i]))))
        })
    });
    g.finish();
}

fn naive_normalize(raw: &str) -> String {
    let decoded: String = {
        let bytes = raw.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                out.push(u8::from_str_radix(&raw[i + 1..i + 3], 16).unwrap_or(b'%'));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut segs: Vec<String> = Vec::new();
    for s in decoded.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s.to_string()),
        }
    }
    format!("/{}", segs.join("/"))
}

fn path(c: &mut Criterion) {
    let raw = "/api/v1/users/%7Ejohn/./orders//2024/../2025/items";
    let mut g = c.benchmark_group("path_normalize");
    let (mut out, mut scratch) = (Vec::with_capacity(256), Vec::with_capacity(256));
    g.bench_function("reused_buffers", |b| {
        b.iter(|| black_box(normalize(black_box(raw.as_bytes()), &mut out, &mut scratch).is_ok()))
    });
    g.bench_function("naive_allocating", |b| {
        b.iter(|| black_box(naive_normalize(black_box(raw))))
    });
    g.finish();
}

fn json_body(items: usize) -> Vec<u8> {
    let list: Vec<String> = (0..items)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:06}","qty":{},"price":{}.25,"tags":["a","b"]}}"#,
                i % 9 + 1,
                i % 50
            )
        })
        .collect();
    format!(r#"{{"customer":"c-123","items":[{}]}}"#, list.join(",")).into_bytes()
}

fn json_schema(c: &mut Criterion) {
    let schema = serde_json::json!({
        "type": "object",
        "required": ["customer", "items"],
        "properties": {
            "customer": {"type": "string", "maxLength": 64},
            "items": {"type": "array", "maxItems": 10000, "items": {
                "type": "object",
                "required": ["sku", "qty", "price"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^SKU-[0-9]{6}$"},
                    "qty": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string"}}
                },
                "additionalProperties": false
            }}
        }
    });
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let mut g = c.benchmark_group("json_schema");
    for items in [14, 220] {
        let body = json_body(items);
        let kib = body.len() as f64 / 1024.0;
        g.throughput(criterion::Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("parse_and_validate_{kib:.0}KiB"), |b| {
            b.iter(|| {
                let v: serde_json::Value = serde_json::from_slice(black_box(&body)).unwrap();
                black_box(validator.is_valid(&v))
            })
        });
        g.bench_function(format!("parse_only_{kib:.0}KiB"), |b| {
            b.iter(|| {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
            })
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    use ringgate::ratelimit::gcra::{Gcra, Table};
    use std::sync::Mutex;
    let p = Gcra::new(1_000_000, 1_000_000_000, 1_000);
    let mut table = Table::new(65_536);
    let naive: Mutex<HashMap<u64, (f64, u64)>> = Mutex::new(HashMap::new());
    let mut g = c.benchmark_group("rate_limit");
    let mut now = 0u64;
    g.bench_function("gcra_table_hit", |b| {
        b.iter(|| {
            now += 1_000;
            let d = table.check(black_box(42), now, p);
            table.commit(&d);
            black_box(d.allowed)
        })
    });
    let mut k = 0u64;
    g.bench_function("gcra_table_new_key", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
            now += 1_000;
            let d = table.check(black_box(k), now, p);
            table.commit(&d);
            black_box(d.allowed)
        })
    });
    g.bench_function("naive_mutex_hashmap_hit", |b| {
        b.iter(|| {
            now += 1_000;
            let mut m = naive.lock().unwrap();
            let e = m.entry(black_box(42)).or_insert((1_000.0, now));
            let refill = (now - e.1) as f64 / 1_000.0;
            e.0 = (e.0 + refill).min(1_000.0);
            e.1 = now;
            let ok = e.0 >= 1.0;
            if ok {
                e.0 -= 1.0;
            }
            black_box(ok)
        })
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let fixture = |n: &str| format!("{}/tests/fixtures/auth/{n}", env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:0\"\n\n[[auth.jwt]]\nname = \"idp\"\n\
         algorithms = [\"RS256\", \"ES256\", \"EdDSA\", \"HS256\"]\n\
         pem_files = [{{ file = \"{}\" }}, {{ file = \"{}\" }}, {{ file = \"{}\" }}]\nhmac_secret_file = \"{}\"\n",
        fixture("rsa.pub.pem"),
        fixture("ec256.pub.pem"),
        fixture("ed.pub.pem"),
        fixture("hs.secret"),
    );
    let config = Config::parse("bench.toml", &text).unwrap();
    let now = 1_800_000_000u64;
    let claims = serde_json::json!({
        "sub": "alice", "exp": now + 3600, "iat": now, "scope": "orders:read profile",
        "iss": "https://idp.example.com", "aud": "orders", "roles": ["staff"],
    });
    let read = |n: &str| std::fs::read(fixture(n)).unwrap();
    let token = |alg: Algorithm, key: EncodingKey| {
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap()
    };
    let tokens = [
        (
            "rs256",
            token(
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&read("rsa.key.pem")).unwrap(),
            ),
        ),
        (
            "es256",
            token(
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&read("ec256.key.pem")).unwrap(),
            ),
        ),
        (
            "eddsa",
            token(
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&read("ed.key.pem")).unwrap(),
            ),
        ),
        (
            "hs256",
            token(
                Algorithm::HS256,
                EncodingKey::from_secret(&read("hs.secret")),
            ),
        ),
    ];
    let issuer = &config.auth.issuers[0];
    let mut g = c.benchmark_group("jwt");
    for (name, t) in &tokens {
        g.bench_function(format!("{name}_verify"), |b| {
            b.iter(|| black_box(issuer.verify(black_box(t.as_bytes()), now, None).is_ok()))
        });
    }
    let state = ringgate::auth::AuthState::new(4096, 7);
    let t = tokens[0].1.as_bytes();
    assert!(ringgate::auth::verify_token(&config.auth, Some(0), t, now, &state).is_ok());
    g.bench_function("cached", |b| {
        b.iter(|| {
            black_box(
                ringgate::auth::verify_token(&config.auth, Some(0), black_box(t), now, &state)
                    .is_ok(),
            )
        })
    });
    g.finish();
}

/// A request's stages, as far as their size and a trivial body go: the
/// future holds a 3.8 KiB state across an await, like ringgate's.
async fn stages(n: u64) -> u64 {
    let state = [n as u8; 3800];
    std::future::ready(()).await;
    black_box(&state)[0] as u64 + n
}

/// Polls `fut` once with a no-op waker; it completes on the first poll.
fn poll_once<F: std::future::Future<Output = u64>>(fut: std::pin::Pin<&mut F>) -> u64 {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("completes at once"),
    }
}

fn stage_slot(c: &mut Criterion) {
    let mut g = c.benchmark_group("stage_slot");
    let slots = ringgate::worker::StageSlots::default();
    g.bench_function("pooled slot", |b| {
        b.iter(|| {
            let mut fut = slots.run(|| stages(black_box(7)));
            poll_once(std::pin::Pin::new(&mut fut))
        })
    });
    g.bench_function("naive: Box::pin per request", |b| {
        b.iter(|| poll_once(Box::pin(stages(black_box(7))).as_mut()))
    });
    g.bench_function("inline in the task", |b| {
        b.iter(|| poll_once(std::pin::pin!(stages(black_box(7)))))
    });
    g.finish();
}

criterion_group!(
    benches,
    stage_slot,
    jwt,
    parse,
    route,
    rewrite,
    ip_filter,
    path,
    json_schema,
    rate_limit
);
criterion_main!(benches);

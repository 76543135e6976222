//! Metrics, latency reports, access and audit logs, trace context: the
//! real gateway, real requests, then the admin endpoints and log files.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// Routes shared by the tests: `api` proxies, `health` answers itself.
fn routes(up: &Upstream, extra_cluster: &str) -> String {
    format!(
        "{}{extra_cluster}
[[routes]]
name = \"health\"
match = {{ path = \"/health\" }}
respond = {{ status = 200, body = \"ok\" }}

[[routes]]
name = \"api\"
match = {{ prefix = \"/api/\" }}
proxy = {{ cluster = \"backend\" }}
",
        cluster("backend", &[up], "")
    )
}

fn api_upstream() -> Upstream {
    Upstream::with(|r| {
        if r.target.starts_with("/api/fail") {
            Reply::status(503, &[], "down")
        } else if r.target.starts_with("/api/slow") {
            // Latency injected into the origin, not a synchronisation.
            std::thread::sleep(Duration::from_millis(200));
            Reply::ok("slow")
        } else {
            Reply::ok("hello")
        }
    })
}

#[test]
fn metrics_count_exactly_the_requests_sent() {
    for driver in DRIVERS {
        let up = api_upstream();
        let dead = format!(
            "[[clusters]]\nname = \"dead\"\nendpoints = [\"{}\"]\nconnect_attempts = 1\n\n[[routes]]\nname = \"dead\"\nmatch = {{ prefix = \"/dead\" }}\nproxy = {{ cluster = \"dead\" }}\n",
            Upstream::refused_addr()
        );
        let gw = Gateway::start(&config(driver, &routes(&up, &dead)));
        let addr = gw.main();

        let mut c = Client::connect(addr);
        for _ in 0..5 {
            assert_eq!(c.get("/api/x").status, 200);
        }
        for _ in 0..3 {
            let r = c
                .request("POST /api/y HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789");
            assert_eq!(r.status, 200);
        }
        assert_eq!(c.get("/api/fail").status, 503);
        for _ in 0..2 {
            assert_eq!(c.get("/health").status, 200);
        }
        for _ in 0..4 {
            assert_eq!(c.get("/nope").status, 404);
        }
        assert_json_error(&get(addr, "/dead/x"), 502);
        // Refused before routing: counted under the unmatched route.
        assert_eq!(request(addr, "GET / HTTP/1.1\r\n\r\n").status, 400);
        drop(c);

        let m = scrape(&gw);
        // Every path above ended without a panic.
        let panics = "ringgate_connection_panics_total";
        assert!(m.has(panics), "{}", m.text);
        assert_eq!(m.sum(panics, &[]), 0.0);
        let req = "ringgate_requests_total";
        let api_get = [("route", "api"), ("method", "GET")];
        assert_eq!(
            m.sum(
                req,
                &[("route", "api"), ("method", "GET"), ("status_class", "2xx")]
            ),
            5.0,
            "{}",
            m.text
        );
        assert_eq!(
            m.sum(
                req,
                &[
                    ("route", "api"),
                    ("method", "POST"),
                    ("status_class", "2xx")
                ]
            ),
            3.0
        );
        assert_eq!(
            m.sum(req, &[("route", "api"), ("status_class", "5xx")]),
            1.0
        );
        assert_eq!(m.sum(req, &api_get), 6.0);
        assert_eq!(m.sum(req, &[("route", "health")]), 2.0);
        assert_eq!(
            m.sum(req, &[("route", "(unmatched)"), ("status_class", "4xx")]),
            5.0
        );
        assert_eq!(
            m.sum(req, &[("route", "dead"), ("status_class", "5xx")]),
            1.0
        );
        assert_eq!(m.sum("ringgate_worker_requests_total", &[]), 17.0);

        // Histograms count the same requests; upstream time only when proxied.
        let api = [("route", "api")];
        assert_eq!(m.sum("ringgate_request_duration_seconds_count", &api), 9.0);
        assert_eq!(m.sum("ringgate_upstream_duration_seconds_count", &api), 9.0);
        assert_eq!(
            m.sum(
                "ringgate_request_duration_seconds_count",
                &[("route", "health")]
            ),
            2.0
        );
        assert_eq!(
            m.sum(
                "ringgate_upstream_duration_seconds_count",
                &[("route", "health")]
            ),
            0.0
        );
        assert_eq!(
            m.sum(
                "ringgate_request_duration_seconds_bucket",
                &[("route", "api"), ("le", "+Inf")]
            ),
            9.0
        );
        assert!(m.sum("ringgate_request_duration_seconds_sum", &api) > 0.0);

        // Bytes: POST bodies in, "hello" bodies out, at least.
        assert!(m.sum("ringgate_request_bytes_total", &api) >= 30.0 + 9.0 * 20.0);
        assert!(m.sum("ringgate_response_bytes_total", &api) >= 8.0 * 5.0);

        // Upstream connections: opened = what the upstream accepted; every
        // proxied request used an opened or reused connection.
        let backend = [("cluster", "backend")];
        let opened = m.sum("ringgate_upstream_connections_opened_total", &backend);
        let reused = m.sum("ringgate_upstream_connections_reused_total", &backend);
        assert_eq!(opened, up.connections() as f64);
        assert_eq!(opened + reused, 9.0);
        assert!(
            reused >= 7.0,
            "one keep-alive client: at most 2 workers' connections"
        );
        assert_eq!(
            m.sum(
                "ringgate_upstream_errors_total",
                &[("cluster", "dead"), ("kind", "connect")]
            ),
            1.0
        );
        assert_eq!(m.sum("ringgate_upstream_errors_total", &backend), 0.0);
        let dead_health: Vec<f64> = m
            .matching("ringgate_upstream_endpoint_healthy", &[("cluster", "dead")])
            .map(|s| s.value)
            .collect();
        assert_eq!(dead_health.len(), 2, "one per worker");
        assert!(
            dead_health.contains(&0.0),
            "the failing endpoint is ejected"
        );
        assert!(m
            .matching("ringgate_upstream_endpoint_healthy", &backend)
            .all(|s| s.value == 1.0));

        // Process figures.
        assert_eq!(m.sum("ringgate_worker_driver", &[("driver", driver)]), 2.0);
        assert_eq!(
            m.sum(
                "ringgate_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert!(m.has("ringgate_downstream_connections"));
        assert_eq!(m.sum("ringgate_config_reloads_total", &[]), 0.0);

        // Label values are configured names only: no paths, no addresses.
        for s in &m.samples {
            for (k, v) in &s.labels {
                assert!(!v.contains("/nope") && !v.contains("/api/x"), "{k}={v}");
            }
        }
    }
}

#[test]
fn latency_report_matches_the_requests_sent() {
    let up = api_upstream();
    let gw = Gateway::start(&config("io_uring", &routes(&up, "")));
    let mut c = Client::connect(gw.main());
    for _ in 0..90 {
        assert_eq!(c.get("/api/fast").status, 200);
    }
    for _ in 0..10 {
        assert_eq!(c.get("/api/slow").status, 200);
    }

    let r = get(gw.admin(), "/stats/latency");
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["unit"], "ms");
    let api = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "api")
        .expect("api route");
    for kind in ["request", "upstream"] {
        let h = &api[kind];
        assert_eq!(h["count"], 100, "{kind}: {h}");
        let p = |k: &str| h[k].as_f64().unwrap();
        // 10% of requests took at least 200 ms (values are exact to 1%).
        assert!(p("p99") >= 198.0 && p("max") >= 198.0, "{h}");
        assert!(p("p50") < 198.0, "{h}");
        assert!(p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p99.9"));
        assert!(p("p99.9") <= p("max"));
    }

    // The hgrm distribution ends at the total count.
    let r = get(gw.admin(), "/stats/latency?format=hgrm&route=api");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("Value     Percentile TotalCount 1/(1-Percentile)"),
        "{text}"
    );
    assert!(text.contains("Total count    =          100]"), "{text}");
    let last = text
        .lines()
        .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    assert_eq!(last.split_whitespace().nth(2), Some("100"), "{text}");
    let r = get(gw.admin(), "/stats/latency?format=hgrm&route=missing");
    assert_eq!(r.status, 404);
}

fn access_config(driver: &str, up: &Upstream, log: &Path, extra: &str) -> String {
    config(
        driver,
        &format!(
            "[access_log]\ndestination = \"{}\"\nflush_interval = \"20ms\"\n{extra}\n{}",
            log.display(),
            routes(up, "")
        ),
    )
}

#[test]
fn access_log_lines_are_json_and_hold_no_secrets() {
    let up = api_upstream();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&access_config("io_uring", &up, &log, ""));
    let mut c = Client::connect(gw.main());
    let r = c.request(
        "POST /api/items?api_key=QUERYSECRET&page=2 HTTP/1.1\r\nHost: t\r\n\
         Authorization: Bearer TOKENSECRET\r\nCookie: session=COOKIESECRET\r\n\
         X-Api-Key: APIKEYSECRET\r\nContent-Length: 4\r\n\r\nbody",
    );
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(c.get("/nope").status, 404);

    let lines = wait_file_lines(&log, 2);
    let text = lines.join("\n");
    for secret in [
        "QUERYSECRET",
        "TOKENSECRET",
        "COOKIESECRET",
        "APIKEYSECRET",
        "Bearer",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let v: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["type"], "access");
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/items?api_key=***&page=***");
    assert_eq!(v["route"], "api");
    assert_eq!(v["cluster"], "backend");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["status"], 200);
    assert!(v["bytes_in"].as_u64().unwrap() >= 4 + 100, "{v}");
    assert!(v["bytes_out"].as_u64().unwrap() >= 5, "{v}");
    assert!(v["duration_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
    assert!(v["worker"].as_u64().unwrap() < 2);
    let time = v["time"].as_str().unwrap();
    assert_eq!(time.len(), 24, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");

    let v: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["route"], Value::Null);
    assert_eq!(v["upstream_ms"], Value::Null);
}

#[test]
fn access_log_sampling_per_route() {
    let up = api_upstream();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // One worker: its lines reach the file in request order.
    let text = access_config("io_uring", &up, &log, "")
        .replace("workers = 2", "workers = 1")
        .replace(
            "name = \"health\"",
            "name = \"health\"\naccess_log_sample = 0.0",
        )
        .replace("name = \"api\"", "name = \"api\"\naccess_log_sample = 0.25");
    let gw = Gateway::start(&text);
    let mut c = Client::connect(gw.main());
    for _ in 0..10 {
        assert_eq!(c.get("/health").status, 200);
    }
    for _ in 0..20 {
        assert_eq!(c.get("/api/x").status, 200);
    }
    // Unmatched requests are always logged: the last line marks the end.
    assert_eq!(c.get("/end").status, 404);
    let lines = wait_file_lines(&log, 6);
    let routes: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["route"].to_string())
        .collect();
    assert_eq!(
        routes.iter().filter(|r| *r == "\"api\"").count(),
        5,
        "{routes:?}"
    );
    assert_eq!(routes.iter().filter(|r| *r == "\"health\"").count(), 0);
    assert_eq!(routes.last().map(String::as_str), Some("null"));
    assert_eq!(lines.len(), 6);
}

#[test]
fn sigusr1_reopens_the_access_log() {
    let up = api_upstream();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let gw = Gateway::start(&access_config("epoll", &up, &log, ""));
    assert_eq!(get(gw.main(), "/api/one").status, 200);
    wait_file_lines(&log, 1);
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    gw.wait_log("log files reopened");
    assert_eq!(get(gw.main(), "/api/two").status, 200);
    let fresh = wait_file_lines(&log, 1);
    assert!(fresh[0].contains("/api/two"), "{fresh:?}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1);
    assert!(old.contains("/api/one"));
    // The reopen itself is an audit event (audit goes to stderr by default).
    gw.wait_log(r#""event":"log_reopen""#);
}

#[test]
fn a_stuck_log_destination_drops_and_counts_instead_of_blocking() {
    let up = api_upstream();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    // A reader that never reads: the pipe fills and the writer blocks.
    use std::os::unix::fs::OpenOptionsExt;
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(&fifo)
        .unwrap();
    let gw = Gateway::start(&access_config(
        "io_uring",
        &up,
        &fifo,
        "batch = \"4KiB\"\nqueue = 1",
    ));
    let mut c = Client::connect(gw.main());
    let n = 3000;
    for _ in 0..n {
        let r = c.request(
            "GET /api/a-path-long-enough-to-fill-the-pipe-quickly HTTP/1.1\r\nHost: t\r\n\r\n",
        );
        assert_eq!(r.status, 200);
    }
    // Let the last partial batches reach the (full) queue.
    let m = wait_metric(&gw, |m| {
        m.sum("ringgate_log_dropped_lines_total", &[("log", "access")]) > 0.0
    });
    let written = m.sum("ringgate_log_lines_total", &[("log", "access")]);
    let dropped = m.sum("ringgate_log_dropped_lines_total", &[("log", "access")]);
    assert!(written + dropped <= n as f64, "{written} + {dropped}");
    // The pipe holds 64 KiB: far fewer lines than were sent.
    assert!(written < n as f64 / 2.0, "{written}");
}

fn libc_o_nonblock() -> i32 {
    // O_NONBLOCK on Linux (all architectures ringgate supports).
    0o4000
}

#[test]
fn audit_log_records_reloads_and_admin_calls() {
    let up = api_upstream();
    let text = config("io_uring", &routes(&up, ""));
    let gw = Gateway::start(&text);

    gw.signal("HUP");
    gw.wait_log(r#""event":"config_reload","result":"ok""#);
    std::fs::write(&gw.config_path, "[server]\nworkers = \"many\"\n").unwrap();
    gw.signal("HUP");
    let refused = gw.wait_log(r#""event":"config_reload","result":"refused""#);
    assert!(refused.contains(r#""errors":1"#), "{refused}");
    assert!(
        !refused.contains("many"),
        "config values stay out of the audit log"
    );

    assert_eq!(get(gw.admin(), "/stats/allocations").status, 200);
    let call = gw.wait_log(r#""event":"admin_call""#);
    let v: Value = serde_json::from_str(&call[call.find('{').unwrap()..]).unwrap();
    assert_eq!(v["type"], "audit");
    assert_eq!(v["path"], "/stats/allocations");
    assert_eq!(v["status"], 200);
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    let m = scrape(&gw);
    assert_eq!(
        m.sum("ringgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.sum("ringgate_config_reloads_total", &[("result", "refused")]),
        1.0
    );
    // Probes and scrapes are not audited.
    assert_eq!(get(gw.admin(), "/healthz").status, 200);
    assert_eq!(gw.count_log(r#""path":"/metrics""#), 0);
}

#[test]
fn trace_context_is_passed_through_or_started() {
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let up = api_upstream();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");

    // propagate (default): untouched both when present and when absent.
    let gw = Gateway::start(&access_config("io_uring", &up, &log, ""));
    let raw = format!(
        "GET /api/t HTTP/1.1\r\nHost: t\r\ntraceparent: {valid}\r\ntracestate: a=1\r\n\r\n"
    );
    let mut c = Client::connect(gw.main());
    assert_eq!(c.request(&raw).status, 200);
    assert_eq!(c.get("/api/none").status, 200);
    drop(c);
    let reqs = up.wait_requests(2);
    assert_eq!(reqs[0].header("traceparent"), Some(valid));
    assert_eq!(reqs[0].header("tracestate"), Some("a=1"));
    assert_eq!(reqs[1].header("traceparent"), None);
    let lines = wait_file_lines(&log, 2);
    let logged: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(logged["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    drop(gw);

    // start: a valid one passes, a missing one is created, an invalid one
    // is replaced and its tracestate dropped.
    let up = api_upstream();
    std::fs::remove_file(&log).unwrap();
    let text = access_config("io_uring", &up, &log, "")
        .replace("[server]\n", "[server]\ntrace_context = \"start\"\n");
    let gw = Gateway::start(&text);
    let mut c = Client::connect(gw.main());
    assert_eq!(c.request(&raw).status, 200);
    assert_eq!(c.get("/api/none").status, 200);
    let bad = "GET /api/bad HTTP/1.1\r\nHost: t\r\ntraceparent: 00-XYZ-00f067aa0ba902b7-01\r\ntracestate: b=2\r\n\r\n";
    assert_eq!(c.request(bad).status, 200);
    let reqs = up.wait_requests(3);
    assert_eq!(reqs[0].header("traceparent"), Some(valid));
    let created = reqs[1]
        .header("traceparent")
        .expect("a traceparent is started");
    assert_eq!(created.len(), 55);
    assert!(
        created.starts_with("00-") && created.ends_with("-01"),
        "{created}"
    );
    let replaced = reqs[2].header("traceparent").unwrap();
    assert_ne!(replaced, created);
    assert_eq!(reqs[2].header_count("traceparent"), 1);
    assert_eq!(reqs[2].header("tracestate"), None);
    let lines = wait_file_lines(&log, 3);
    let logged: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(logged["trace_id"], &created[3..35]);
}

/// Each worker reports whether its io_uring waits batch: not while idle
/// under the default load gate, always with the gate at 0.
#[test]
fn workers_report_whether_their_waits_batch() {
    let up = api_upstream();
    for (setting, batching) in [("", 0.0), ("io_uring_wait_batch_busy_percent = 0\n", 1.0)] {
        let text = config("io_uring", &routes(&up, "")).replacen(
            "[server]\n",
            &format!("[server]\n{setting}"),
            1,
        );
        let gw = Gateway::start(&text);
        assert_eq!(get(gw.main(), "/api/x").status, 200);
        let m = scrape(&gw);
        let values: Vec<f64> = m
            .matching("ringgate_worker_wait_batching", &[])
            .map(|s| s.value)
            .collect();
        assert_eq!(values, [batching, batching], "{setting:?}: one per worker");
    }
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/ringgate.json"),
    )
    .unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));

    let up = api_upstream();
    // A store that is never there: cluster mode's series are exported too
    // (and fail-open routing goes on).
    let store = "[rate_limit.redis]\nurl = \"unix:///nonexistent/ringgate.sock\"\n\n";
    let gw = Gateway::start(&config("io_uring", &format!("{store}{}", routes(&up, ""))));
    assert_eq!(get(gw.main(), "/api/x").status, 200);
    let m = scrape(&gw);
    assert_eq!(m.sum("ringgate_rate_limit_store_up", &[]), 0.0);

    let mut queried = Vec::new();
    let bytes = dashboard.as_bytes();
    let mut i = 0;
    while let Some(at) = dashboard[i..].find("ringgate_") {
        let start = i + at;
        let end = start
            + bytes[start..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .unwrap_or(bytes.len() - start);
        queried.push(&dashboard[start..end]);
        i = end;
    }
    queried.sort_unstable();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(
            m.text.contains(&format!("# TYPE {name} ")) || m.has(name),
            "the dashboard queries {name}, which the gateway does not export"
        );
    }
}

//! Timeouts, graceful shutdown, reload, the admin listener, connection
//! limits and the command line.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn slowloris_gets_408_within_the_head_timeout() {
    for driver in DRIVERS {
        let up = Upstream::new(Reply::ok("x"));
        let body = format!(
            "[timeouts]\nrequest_head = \"1s\"\n{}{}",
            cluster("c", &[&up], ""),
            route_all("c")
        );
        let gw = Gateway::start(&config(driver, &body));
        let mut c = Client::connect(gw.main());
        let mut writer = c.stream.try_clone().unwrap();
        let started = Instant::now();
        // A byte every 100 ms keeps the connection busy but never finishes
        // the head: the limit is on the whole head, not on idleness.
        let trickle = std::thread::spawn(move || {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if writer.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = c.read_response();
        let elapsed = started.elapsed();
        assert_json_error(&r, 408);
        assert!(
            elapsed >= Duration::from_millis(900),
            "{driver}: too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "{driver}: head timeout is total, got {elapsed:?}"
        );
        assert!(c.is_closed());
        trickle.join().unwrap();
        assert_eq!(up.connections(), 0);
    }
}

/// io_uring completion work waits for the worker to ask for it unless
/// configured otherwise; either way a proxied request completes and the
/// keep-alive idle timer still fires.
#[test]
fn io_uring_completion_work_is_deferred_unless_disabled() {
    let up = Upstream::new(Reply::ok("x"));
    for (setting, mode) in [
        ("", "deferred"),
        ("io_uring_defer_taskrun = false\n", "interrupt"),
    ] {
        let body = format!(
            "[timeouts]\nkeepalive_idle = \"300ms\"\n{}{}",
            cluster("c", &[&up], ""),
            route_all("c")
        );
        let text =
            config("io_uring", &body).replacen("[server]\n", &format!("[server]\n{setting}"), 1);
        let gw = Gateway::start(&text);
        let ready = gw.wait_log("completions=");
        assert!(
            ready.contains(&format!("completions=\"{mode}\"")),
            "{ready}"
        );
        let mut c = Client::connect(gw.main());
        for _ in 0..3 {
            assert_eq!(c.get("/").status, 200, "{mode}");
        }
        assert!(c.is_closed(), "{mode}: idle timer");
    }
}

/// io_uring waits collect several completions unless turned off, and a
/// wait holds a completion for more only while the worker is busy: one
/// client's sequential requests, each alone in the worker, are not held
/// for the batch time (here 200 ms, so holding every wait would take 8 s
/// or more for these 20 requests). Whether the worker's CPU use is
/// measured (the default) or not (`busy_percent = 0`, where the number a
/// wait asks for alone keeps lone requests from being held), and with
/// batching off.
#[test]
fn io_uring_waits_are_batched_without_holding_lone_requests() {
    let up = Upstream::new(Reply::ok("x"));
    for (setting, batch) in [
        ("io_uring_wait_batch_us = 200000\n", "64"),
        (
            "io_uring_wait_batch_us = 200000\nio_uring_wait_batch_busy_percent = 0\n",
            "64",
        ),
        (
            "io_uring_wait_batch = 1\nio_uring_wait_batch_us = 200000\n",
            "1",
        ),
    ] {
        let body = format!("{}{}", cluster("c", &[&up], ""), route_all("c"));
        let text =
            config("io_uring", &body).replacen("[server]\n", &format!("[server]\n{setting}"), 1);
        let gw = Gateway::start(&text);
        let ready = gw.wait_log("wait_batch=");
        assert!(ready.contains(&format!("wait_batch={batch}")), "{ready}");
        let started = Instant::now();
        let mut c = Client::connect(gw.main());
        for _ in 0..10 {
            assert_eq!(c.get("/").status, 200, "{setting}");
        }
        for _ in 0..10 {
            assert_eq!(Client::connect(gw.main()).get("/").status, 200, "{setting}");
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "{setting}: 20 lone requests took {elapsed:?}"
        );
    }
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let body = "[timeouts]\nkeepalive_idle = \"300ms\"\n[[routes]]\nname = \"r\"\nrespond = { status = 200, body = \"ok\" }\n";
    let gw = Gateway::start(&config("io_uring", body));
    let mut c = Client::connect(gw.main());
    assert_eq!(c.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(), "ok");
    let started = Instant::now();
    assert!(c.is_closed());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn stalled_request_body_gets_408() {
    let up = Upstream::new(Reply::ok("x"));
    let body = format!(
        "[timeouts]\nrequest_body_idle = \"300ms\"\n{}{}",
        cluster("c", &[&up], ""),
        route_all("c")
    );
    let gw = Gateway::start(&config("io_uring", &body));
    let mut c = Client::connect(gw.main());
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    assert_json_error(&c.read_response(), 408);
    assert!(c.is_closed());
    assert_eq!(
        up.request_count(),
        0,
        "the upstream never got a complete request"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_closes_idle_ones() {
    for driver in DRIVERS {
        let gate = Gate::default();
        let g = gate.clone();
        let up = Upstream::with(move |r| {
            if r.target == "/slow" {
                Reply::Gated(g.clone(), Box::new(Reply::ok("finished")))
            } else {
                Reply::ok("quick")
            }
        });
        let mut gw = Gateway::start(&config(
            driver,
            &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
        ));
        let mut idle = Client::connect(gw.main());
        assert_eq!(
            idle.request("GET /q HTTP/1.1\r\nHost: x\r\n\r\n").text(),
            "quick"
        );
        let mut busy = Client::connect(gw.main());
        busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
        up.wait_requests(2);

        gw.signal("TERM");
        gw.wait_log("shutting down");
        // The idle keep-alive connection is closed by the drain...
        assert!(
            idle.is_closed(),
            "{driver}: idle connection not closed on drain"
        );
        // ...while the in-flight request completes, then the process exits 0.
        gate.open();
        let r = busy.read_response();
        assert_eq!((r.status, r.text().as_str()), (200, "finished"));
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "no keep-alive while draining"
        );
        let status = gw.wait_exit();
        assert!(
            status.success(),
            "{driver}: exit {status:?}\n{}",
            gw.log_text()
        );
        assert!(
            std::net::TcpStream::connect(gw.main()).is_err(),
            "listener closed"
        );
    }
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let up = Upstream::new(Reply::Hang);
    let body = format!("{}{}", cluster("c", &[&up], ""), route_all("c"));
    let text =
        config("io_uring", &body).replace("drain_timeout = \"20s\"", "drain_timeout = \"500ms\"");
    let mut gw = Gateway::start(&text);
    let mut c = Client::connect(gw.main());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    up.wait_requests(1);
    gw.signal("INT");
    assert!(gw.wait_exit().success());
    gw.wait_log("drain timeout passed");
}

#[test]
fn admin_health_and_readiness() {
    let gw = Gateway::start(&config(
        "io_uring",
        "[[routes]]\nname = \"r\"\nrespond = { status = 200 }\n",
    ));
    let r = get(gw.admin(), "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    let r = get(gw.admin(), "/readyz");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, r#"{"status":"ready"}"#)
    );
    assert_eq!(get(gw.admin(), "/nope").status, 404);
    let r = request(
        gw.admin(),
        "POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_old_config() {
    // The body and a security field of the gateway's own responses.
    let route = |text: &str| {
        format!("[security.response_headers]\nset = {{ \"x-config\" = \"{text}\" }}\n\n[[routes]]\nname = \"r\"\nrespond = {{ status = 200, body = \"{text}\" }}\n")
    };
    let gw = Gateway::start(&config("io_uring", &route("v1")));
    let mut kept = Client::connect(gw.main());
    let r = kept.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (r.text().as_str(), r.header("x-config")),
        ("v1", Some("v1"))
    );

    std::fs::write(&gw.config_path, config("io_uring", &route("v2"))).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reloaded");
    assert_eq!(get(gw.main(), "/").text(), "v2");
    let r = kept.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (r.text().as_str(), r.header("x-config")),
        ("v2", Some("v2")),
        "open connections see it too"
    );

    let broken =
        config("io_uring", &route("v3")).replace("status = 200", "status = \"two hundred\"");
    std::fs::write(&gw.config_path, broken).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reload refused");
    let located = gw.wait_log("routes[0].respond.status");
    assert!(located.contains("ringgate.toml:"), "{located}");
    assert_eq!(get(gw.main(), "/").text(), "v2", "old config keeps serving");
}

#[test]
fn connections_over_the_limit_wait_in_the_backlog() {
    let body = "[[routes]]\nname = \"r\"\nrespond = { status = 200, body = \"ok\" }\n";
    let text = config("io_uring", body)
        .replace("workers = 2", "workers = 1")
        .replace(
            "name = \"public\"\n",
            "name = \"public\"\nmax_connections = 1\n",
        );
    let gw = Gateway::start(&text);
    let mut first = Client::connect(gw.main());
    assert_eq!(
        first.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "ok"
    );
    // The second connection completes its TCP handshake in the backlog but
    // is not served while the first holds the only slot.
    let mut second = Client::connect(gw.main());
    second.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    second
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = std::io::Read::read(&mut second.reader, &mut byte);
    assert!(early.is_err(), "served over the limit: {early:?}");
    second.stream.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(
        first.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "ok",
        "the first still works"
    );
    drop(first);
    assert_eq!(
        second.read_response().text(),
        "ok",
        "served once a slot frees"
    );
}

fn ringgate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_validates_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        config(
            "auto",
            "[[routes]]\nname = \"r\"\nrespond = { status = 204 }\n",
        ),
    )
    .unwrap();
    let out = ringgate(&["check", "-c", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listeners]]\nname = \"l\"\naddress = \"nowhere\"\n\n[timeouts]\nupstream_connect = \"3\"\n").unwrap();
    let out = ringgate(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = bad.display();
    assert!(
        err.contains(&format!("{path}:6:20: timeouts.upstream_connect:")),
        "{err}"
    );

    let bad2 = dir.path().join("bad2.toml");
    std::fs::write(
        &bad2,
        "[[listeners]]\nname = \"l\"\naddress = \"nowhere\"\n",
    )
    .unwrap();
    let out = ringgate(&["check", "-c", bad2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3:11: listeners[0].address:", bad2.display())),
        "{err}"
    );

    let out = ringgate(&["run", "-c", bad2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "run refuses a bad config");

    let out = ringgate(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ringgate "));
}

#[test]
fn shipped_configs_are_valid() {
    for file in ["config/quickstart.toml", "config/ringgate.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let out = ringgate(&["check", "-c", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

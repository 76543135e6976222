//! Rate limiting on the real binary with two workers: one limit for the
//! whole gateway whichever core a connection lands on, the IETF fields, and
//! independent keys.

use crate::common::*;

fn limited_config(up: &Upstream, policy: &str) -> String {
    config(
        "io_uring",
        &format!(
            "[rate_limit]\nsync_interval = \"10ms\"\n\n[[rate_limit.policies]]\n{policy}\n\n{}\
             [[routes]]\nname = \"all\"\nproxy = {{ cluster = \"c\" }}\nrate_limits = [\"p\"]\n",
            cluster("c", &[up], "")
        ),
    )
}

#[test]
fn one_limit_across_both_workers() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&limited_config(
        &up,
        "name = \"p\"\nrate = 10\nper = \"1h\"\nburst = 10\nkey = [\"client_ip\"]",
    ));

    // The whole burst on one connection (one worker).
    let mut c = Client::connect(gw.main());
    for i in 0..10 {
        let r = c.get("/x");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"p\";q=10;w=3600"));
        assert!(r
            .header("ratelimit")
            .unwrap()
            .starts_with(&format!("\"p\";r={};t=", 9 - i)));
    }
    // Wait until the other worker has been told.
    wait_metric(&gw, |m| {
        m.sum("ringgate_rate_limit_sync_received_total", &[]) >= 10.0
    });

    // New connections spread over both workers: every one is refused.
    let before = scrape(&gw);
    for _ in 0..24 {
        let r = get(gw.main(), "/x");
        assert_json_error(&r, 429);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=360).contains(&retry), "{retry}");
        assert!(r.header("ratelimit").unwrap().starts_with("\"p\";r=0;t="));
    }
    let after = scrape(&gw);
    for w in ["0", "1"] {
        let served = after.sum("ringgate_worker_requests_total", &[("worker", w)])
            - before.sum("ringgate_worker_requests_total", &[("worker", w)]);
        assert!(served > 0.0, "worker {w} took none of 24 connections");
    }
    assert_eq!(up.request_count(), 10);
    assert_eq!(
        after.sum("ringgate_rate_limited_total", &[("route", "all")]),
        24.0
    );
    gw.wait_log(r#""event":"rate_limited""#);
}

#[test]
fn a_burst_on_many_connections_stays_within_the_bound() {
    let up = Upstream::named("ok");
    // N = 20 per hour; 2 workers, burst 20: bound N + (2 - 1) * 20.
    let gw = Gateway::start(&limited_config(
        &up,
        "name = \"p\"\nrate = 20\nper = \"1h\"\nkey = [\"client_ip\"]",
    ));
    let mut clients: Vec<Client> = (0..16).map(|_| Client::connect(gw.main())).collect();
    let mut admitted = 0;
    for round in 0..10 {
        for c in clients.iter_mut() {
            let s = c.get(&format!("/r{round}")).status;
            assert!(s == 200 || s == 429, "{s}");
            admitted += usize::from(s == 200);
        }
    }
    eprintln!("admitted {admitted} of a limit of 20 (bound 40)");
    assert!(
        (20..=40).contains(&admitted),
        "admitted {admitted} of a limit of 20"
    );
    // Once reconciled, both workers refuse.
    wait_metric(&gw, |m| {
        m.sum("ringgate_rate_limit_sync_received_total", &[]) > 0.0
    });
    for c in clients.iter_mut() {
        assert_eq!(c.get("/after").status, 429);
    }
}

#[test]
fn distinct_keys_are_independent() {
    let up = Upstream::named("ok");
    let gw = Gateway::start(&limited_config(
        &up,
        "name = \"p\"\nrate = 2\nper = \"1h\"\nkey = [\"header:x-api-key\"]",
    ));
    let mut c = Client::connect(gw.main());
    let send = |c: &mut Client, key: &str| {
        c.request(&format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n"
        ))
        .status
    };
    assert_eq!(send(&mut c, "alpha"), 200);
    assert_eq!(send(&mut c, "alpha"), 200);
    assert_eq!(send(&mut c, "alpha"), 429);
    assert_eq!(send(&mut c, "beta"), 200);
    assert_eq!(send(&mut c, "beta"), 200);
    assert_eq!(send(&mut c, "beta"), 429);
    assert_eq!(send(&mut c, "gamma"), 200);
    // A misconfigured reference is named at load.
    let bad = limited_config(&up, "name = \"q\"\nrate = 2\nper = \"1h\"");
    let err = Gateway::try_start(&bad).err().expect("refused");
    assert!(
        err.contains("routes[0].rate_limits[0]") && err.contains("\"p\""),
        "{err}"
    );
}

fn capped_config(up: &Upstream, queue_timeout: &str) -> String {
    config(
        "epoll",
        &format!(
            "{}[[routes]]\nname = \"slow\"\nproxy = {{ cluster = \"c\" }}\n\
             concurrency = {{ max_in_flight = 2, queue = 1, queue_timeout = \"{queue_timeout}\" }}\n",
            cluster("c", &[up], "")
        ),
    )
    // One worker: the cap is split over workers, and this test wants all
    // four connections on the same one.
    .replace("workers = 2", "workers = 1")
}

#[test]
fn concurrency_cap_queues_then_refuses() {
    let gate = Gate::default();
    let up = Upstream::new(Reply::Gated(gate.clone(), Box::new(Reply::ok("done"))));
    let gw = Gateway::start(&capped_config(&up, "30s"));
    let get_req = "GET /work HTTP/1.1\r\nHost: t\r\n\r\n";

    let mut running: Vec<Client> = (0..2).map(|_| Client::connect(gw.main())).collect();
    for c in running.iter_mut() {
        c.send(get_req.as_bytes());
    }
    up.wait_requests(2);
    let mut queued = Client::connect(gw.main());
    queued.send(get_req.as_bytes());
    wait_metric(&gw, |m| {
        m.sum("ringgate_route_queued", &[("route", "slow")]) == 1.0
    });
    let m = scrape(&gw);
    assert_eq!(m.sum("ringgate_route_in_flight", &[("route", "slow")]), 2.0);

    // Cap and queue full: refused at once.
    let r = get(gw.main(), "/work");
    assert_json_error(&r, 503);
    assert_eq!(up.request_count(), 2);

    // Slots free up: the running ones finish, the queued one runs.
    gate.open();
    for c in running.iter_mut() {
        assert_eq!(c.read_response().text(), "done");
    }
    assert_eq!(queued.read_response().text(), "done");
    assert_eq!(up.request_count(), 3);
    let m = wait_metric(&gw, |m| {
        m.sum("ringgate_route_in_flight", &[("route", "slow")]) == 0.0
    });
    assert_eq!(m.sum("ringgate_route_queued", &[("route", "slow")]), 0.0);
}

#[test]
fn a_queued_request_gives_up_after_the_queue_timeout() {
    let gate = Gate::default();
    let up = Upstream::new(Reply::Gated(gate.clone(), Box::new(Reply::ok("done"))));
    let gw = Gateway::start(&capped_config(&up, "200ms"));
    let mut running: Vec<Client> = (0..2).map(|_| Client::connect(gw.main())).collect();
    for c in running.iter_mut() {
        c.send(b"GET /work HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    up.wait_requests(2);
    let started = std::time::Instant::now();
    let r = get(gw.main(), "/work");
    assert_json_error(&r, 503);
    assert!(started.elapsed() >= std::time::Duration::from_millis(190));
    gate.open();
    for c in running.iter_mut() {
        assert_eq!(c.read_response().status, 200);
    }
    assert_eq!(
        up.request_count(),
        2,
        "the timed-out request never went upstream"
    );
}

/// Sends `count` requests with keys `prefix-0..` pipelined on one
/// connection (a writer and a reader thread) and returns how many were
/// answered 200 and 429.
fn flood(addr: std::net::SocketAddr, prefix: &str, count: usize) -> (usize, usize) {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let prefix = prefix.to_string();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(64 * 1024);
        for i in 0..count {
            write!(
                batch,
                "GET /f HTTP/1.1\r\nHost: t\r\nX-Key: {prefix}-{i}\r\n\r\n"
            )
            .unwrap();
            if batch.len() > 60 * 1024 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        batch.extend_from_slice(
            b"GET /f HTTP/1.1\r\nHost: t\r\nX-Key: last\r\nConnection: close\r\n\r\n",
        );
        writer.write_all(&batch).unwrap();
    });
    // Counts status lines across reads (a line may straddle two).
    let (mut ok, mut limited) = (0, 0);
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = reader.read(&mut buf).expect("flood response");
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(at) = carry[start..]
            .windows(12)
            .position(|w| w.starts_with(b"HTTP/1.1 "))
        {
            match &carry[start + at + 9..start + at + 12] {
                b"200" => ok += 1,
                b"429" => limited += 1,
                other => panic!("status {}", String::from_utf8_lossy(other)),
            }
            start += at + 12;
        }
        let keep = carry.len().saturating_sub(11).max(start);
        carry.drain(..keep);
    }
    sender.join().unwrap();
    // The final request (key "last") is one of the 200s.
    (ok - 1, limited)
}

#[test]
fn a_million_distinct_keys_stay_within_the_table() {
    // 65,536 slots of 16 bytes per worker: 1 MiB each, allocated at start.
    let gw = Gateway::start(&config(
        "io_uring",
        "[rate_limit]\ntable_size = 65536\n\n\
         [[rate_limit.policies]]\nname = \"p\"\nrate = 1\nper = \"1h\"\nkey = [\"header:x-key\"]\n\n\
         [[routes]]\nname = \"all\"\nrate_limits = [\"p\"]\nrespond = { status = 200, body = \"ok\" }\n",
    ));
    // A limited client, on both workers.
    let mut victim = Client::connect(gw.main());
    let send = |c: &mut Client| {
        c.request("GET / HTTP/1.1\r\nHost: t\r\nX-Key: victim\r\n\r\n")
            .status
    };
    assert_eq!(send(&mut victim), 200);
    assert_eq!(send(&mut victim), 429);
    wait_metric(&gw, |m| {
        m.sum("ringgate_rate_limit_sync_received_total", &[]) >= 1.0
    });
    let before = gw.rss();

    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = gw.main();
            std::thread::spawn(move || flood(addr, &format!("k{t}"), 250_000))
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for t in threads {
        let (o, l) = t.join().unwrap();
        ok += o;
        limited += l;
    }
    let after = gw.rss();
    let grown = after.saturating_sub(before);
    eprintln!(
        "1,000,000 keys: {ok} admitted, {limited} sharing a limited slot; RSS {} -> {} KiB",
        before / 1024,
        after / 1024
    );
    assert_eq!(ok + limited, 1_000_000);
    // The tables (2 MiB) plus the per-interval exchange buffers; nothing
    // per key beyond the table.
    assert!(grown < 16 << 20, "RSS grew by {} KiB", grown / 1024);
    // Eviction never freed the limited client, on either worker.
    assert_eq!(send(&mut victim), 429);
    for _ in 0..4 {
        let r = request(
            gw.main(),
            "GET / HTTP/1.1\r\nHost: t\r\nX-Key: victim\r\n\r\n",
        );
        assert_eq!(r.status, 429);
    }
}

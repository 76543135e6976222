//! Cluster mode on real processes: gateways sharing one real `redis-server`
//! enforce one limit, and a store that dies and returns is handled as
//! `failure` says.

use crate::common::redis::Redis;
use crate::common::*;

fn cluster_config(up: &Upstream, redis: &Redis, failure: &str, policy: &str) -> String {
    config(
        "io_uring",
        &format!(
            "[rate_limit]\nsync_interval = \"10ms\"\n\n\
             [rate_limit.redis]\nurl = \"{}\"\nfailure = \"{failure}\"\ntimeout = \"2s\"\n\n\
             [[rate_limit.policies]]\nname = \"p\"\n{policy}\n\n{}\
             [[routes]]\nname = \"open\"\nmatch = {{ prefix = \"/open\" }}\nproxy = {{ cluster = \"c\" }}\n\n\
             [[routes]]\nname = \"limited\"\nproxy = {{ cluster = \"c\" }}\nrate_limits = [\"p\"]\n",
            redis.url,
            cluster("c", &[up], "")
        ),
    )
}

fn store_up(gw: &Gateway, up: bool) -> Metrics {
    wait_metric(gw, |m| {
        m.sum("ringgate_rate_limit_store_up", &[]) == if up { 1.0 } else { 0.0 }
    })
}

fn syncs(gw: &Gateway) -> f64 {
    scrape(gw).sum("ringgate_rate_limit_store_syncs_total", &[("result", "ok")])
}

/// Waits until what `from` admitted so far is in `to`'s tables: three of
/// `from`'s syncs (its workers report once per interval, the sync after
/// that pushes), then two of `to`'s (one reads the stream after the push).
/// A sync's figures move only after its messages reached the workers.
fn settle(from: &Gateway, to: &Gateway) {
    let pushed = syncs(from) + 3.0;
    wait_metric(from, |m| {
        m.sum("ringgate_rate_limit_store_syncs_total", &[("result", "ok")]) >= pushed
    });
    let read = syncs(to) + 2.0;
    wait_metric(to, |m| {
        m.sum("ringgate_rate_limit_store_syncs_total", &[("result", "ok")]) >= read
    });
}

fn keyed(c: &mut Client, key: &str) -> u16 {
    c.request(&format!(
        "GET /k HTTP/1.1\r\nHost: t\r\nX-Key: {key}\r\n\r\n"
    ))
    .status
}

#[test]
fn two_gateways_enforce_one_limit() {
    let redis = Redis::tcp();
    let up = Upstream::named("ok");
    let policy = "rate = 20\nper = \"1h\"\nkey = [\"header:x-key\"]";
    let a = Gateway::start(&cluster_config(&up, &redis, "open", policy));
    let b = Gateway::start(&cluster_config(&up, &redis, "open", policy));
    for gw in [&a, &b] {
        store_up(gw, true);
    }

    // The whole limit spent on A...
    let mut ca = Client::connect(a.main());
    for _ in 0..20 {
        assert_eq!(keyed(&mut ca, "one"), 200);
    }
    assert_eq!(keyed(&mut ca, "one"), 429);
    // ...is refused on B, on every worker, once B has heard of all of it.
    settle(&a, &b);
    for _ in 0..10 {
        let mut cb = Client::connect(b.main());
        let r = cb.request("GET /k HTTP/1.1\r\nHost: t\r\nX-Key: one\r\n\r\n");
        assert_json_error(&r, 429);
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(up.request_count(), 20);

    // A burst alternating between the two: within the bound for 4 workers
    // (limit + 3 * burst), and refused everywhere once synced.
    let received = |gw: &Gateway| {
        scrape(gw).sum(
            "ringgate_rate_limit_store_keys_total",
            &[("direction", "received")],
        )
    };
    let before = [received(&a), received(&b)];
    let mut cb = Client::connect(b.main());
    let mut admitted = 0;
    for _ in 0..60 {
        admitted += usize::from(keyed(&mut ca, "two") == 200);
        admitted += usize::from(keyed(&mut cb, "two") == 200);
    }
    eprintln!("admitted {admitted} of a limit of 20 on two instances (bound 80)");
    assert!((20..=80).contains(&admitted), "admitted {admitted}");
    settle(&a, &b);
    settle(&b, &a);
    for (gw, before) in [(&a, before[0]), (&b, before[1])] {
        assert!(
            scrape(gw).sum(
                "ringgate_rate_limit_store_keys_total",
                &[("direction", "received")],
            ) > before
        );
    }
    assert_eq!(keyed(&mut ca, "two"), 429);
    assert_eq!(keyed(&mut cb, "two"), 429);
    // Other keys are untouched.
    assert_eq!(keyed(&mut cb, "three"), 200);
}

#[test]
fn failing_closed_refuses_while_the_store_is_down_and_recovers() {
    let mut redis = Redis::unix();
    let up = Upstream::named("ok");
    let gw = Gateway::start(&cluster_config(
        &up,
        &redis,
        "closed",
        "rate = 1000\nper = \"1s\"\nkey = [\"client_ip\"]",
    ));
    store_up(&gw, true);
    assert_eq!(get(gw.main(), "/x").status, 200);

    redis.kill();
    store_up(&gw, false);
    gw.wait_log("rate-limit store unreachable");
    for _ in 0..4 {
        let r = get(gw.main(), "/x");
        assert_json_error(&r, 503);
        assert!(
            r.text().contains("rate limiting unavailable"),
            "{}",
            r.text()
        );
    }
    // Routes without rate limits are not affected.
    assert_eq!(get(gw.main(), "/open").status, 200);
    gw.wait_log(r#""event":"rate_limit_store""#);

    redis.restart();
    store_up(&gw, true);
    for _ in 0..4 {
        assert_eq!(get(gw.main(), "/x").status, 200);
    }
    gw.wait_log("rate-limit store reachable again");
    assert_eq!(up.request_count(), 1 + 1 + 4);
}

#[test]
fn failing_open_keeps_the_local_limit_while_the_store_is_down() {
    let mut redis = Redis::unix();
    let up = Upstream::named("ok");
    let gw = Gateway::start(&cluster_config(
        &up,
        &redis,
        "open",
        "rate = 3\nper = \"1h\"\nkey = [\"header:x-key\"]",
    ));
    store_up(&gw, true);
    let mut c = Client::connect(gw.main());
    assert_eq!(keyed(&mut c, "k"), 200);

    redis.kill();
    store_up(&gw, false);
    assert_eq!(keyed(&mut c, "k"), 200);
    assert_eq!(keyed(&mut c, "k"), 200);
    assert_eq!(keyed(&mut c, "k"), 429, "still limited by this instance");

    redis.restart();
    let m = store_up(&gw, true);
    assert!(
        m.sum(
            "ringgate_rate_limit_store_syncs_total",
            &[("result", "error")]
        ) >= 1.0,
        "{}",
        m.text
    );
    assert_eq!(keyed(&mut c, "k"), 429);
    assert_eq!(keyed(&mut c, "other"), 200);
}

#[test]
fn a_store_url_is_checked_at_load_without_echoing_it() {
    let up = Upstream::named("ok");
    let bad = config(
        "epoll",
        &format!(
            "[rate_limit.redis]\nurl = \"http://user:hunter2@host\"\n\n{}{}",
            cluster("c", &[&up], ""),
            route_all("c")
        ),
    );
    let err = Gateway::try_start(&bad).err().expect("refused");
    assert!(err.contains("rate_limit.redis.url"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

//! Load balancing, keep-alive pooling, passive health and upstream failures.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::common::*;

/// One worker, so per-worker balancer state gives exact distributions.
fn one_worker(body: &str) -> Gateway {
    Gateway::start(&config("io_uring", body).replace("workers = 2", "workers = 1"))
}

fn tally(gw: &Gateway, n: usize, req: impl Fn(usize) -> String) -> HashMap<String, usize> {
    let mut c = Client::connect(gw.main());
    let mut counts = HashMap::new();
    for i in 0..n {
        *counts.entry(c.request(&req(i)).text()).or_default() += 1;
    }
    counts
}

fn plain(_: usize) -> String {
    "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string()
}

/// Upstreams "a", "b", "c" behind cluster "c" with `extra` cluster settings.
fn three_upstreams(extra: &str) -> ([Upstream; 3], Gateway) {
    let ups = [
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
    ];
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "{}{}",
            cluster("c", &[&ups[0], &ups[1], &ups[2]], extra),
            route_all("c")
        ),
    ));
    (ups, gw)
}

#[test]
fn round_robin_is_even() {
    let ups = [
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
    ];
    let gw = one_worker(&format!(
        "{}{}",
        cluster("c", &[&ups[0], &ups[1], &ups[2]], ""),
        route_all("c")
    ));
    let counts = tally(&gw, 300, plain);
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![100; 3],
        "{counts:?}"
    );
}

#[test]
fn weighted_round_robin_follows_weights() {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let body = format!(
        "[[clusters]]\nname = \"c\"\nbalancer = \"weighted_round_robin\"\nendpoints = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\", weight = 1 }}]\n{}",
        a.addr,
        b.addr,
        route_all("c")
    );
    let gw = one_worker(&body);
    let counts = tally(&gw, 400, plain);
    assert_eq!((counts["a"], counts["b"]), (300, 100));
}

/// Which upstream each request reached, in arrival order, shared by several
/// upstreams so a test can wait for "the next request landed somewhere".
#[derive(Clone, Default)]
struct Arrivals(Arc<(Mutex<Vec<&'static str>>, Condvar)>);

impl Arrivals {
    fn record(&self, name: &'static str) {
        self.0 .0.lock().unwrap().push(name);
        self.0 .1.notify_all();
    }

    fn wait_for(&self, n: usize) -> &'static str {
        let (lock, cv) = &*self.0;
        let (list, timeout) = cv
            .wait_timeout_while(lock.lock().unwrap(), WAIT, |l| l.len() < n)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "request {n} never reached an upstream"
        );
        list[n - 1]
    }
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    // "slow" holds its requests until the gate opens; "fast" answers at once.
    let gate = Gate::default();
    let arrivals = Arrivals::default();
    let (g, a) = (gate.clone(), arrivals.clone());
    let slow = Upstream::with(move |_| {
        a.record("slow");
        Reply::Gated(g.clone(), Box::new(Reply::ok("slow")))
    });
    let a = arrivals.clone();
    let fast = Upstream::with(move |_| {
        a.record("fast");
        Reply::ok("fast")
    });
    let gw = one_worker(&format!(
        "{}{}",
        cluster("c", &[&slow, &fast], "balancer = \"least_request\""),
        route_all("c")
    ));
    // Send requests one by one until one is parked on "slow".
    let mut parked = None;
    for n in 1.. {
        let mut c = Client::connect(gw.main());
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        if arrivals.wait_for(n) == "slow" {
            parked = Some(c);
            break;
        }
        assert_eq!(c.read_response().text(), "fast");
    }
    // One request outstanding on "slow", none on "fast": two choices over
    // two endpoints always pick "fast".
    let counts = tally(&gw, 50, plain);
    assert_eq!(counts.get("fast"), Some(&50), "{counts:?}");
    gate.open();
    assert_eq!(parked.unwrap().read_response().text(), "slow");
}

#[test]
fn consistent_hash_is_sticky_per_key() {
    let (_ups, gw) = three_upstreams("balancer = \"consistent_hash\"\nhash_header = \"x-user\"");
    let mut owner: HashMap<usize, String> = HashMap::new();
    let mut spread: HashMap<String, usize> = HashMap::new();
    for round in 0..3 {
        for user in 0..60 {
            // A new connection each time: whichever worker takes it, the key
            // maps to the same endpoint.
            let r = request(
                gw.main(),
                &format!("GET / HTTP/1.1\r\nHost: x\r\nX-User: u{user}\r\n\r\n"),
            );
            let name = r.text();
            if round == 0 {
                *spread.entry(name.clone()).or_default() += 1;
                owner.insert(user, name);
            } else {
                assert_eq!(owner[&user], name, "user {user} moved");
            }
        }
    }
    assert_eq!(
        spread.len(),
        3,
        "keys spread over all endpoints: {spread:?}"
    );
}

#[test]
fn consistent_hash_on_client_ip() {
    let (_ups, gw) = three_upstreams("balancer = \"consistent_hash\"");
    // Every request comes from 127.0.0.1: whichever worker and connection
    // carries it, one endpoint gets them all.
    let first = get(gw.main(), "/").text();
    for _ in 0..30 {
        assert_eq!(get(gw.main(), "/").text(), first);
    }
}

#[test]
fn keep_alive_is_reused_on_both_sides() {
    for driver in DRIVERS {
        let up = Upstream::new(Reply::ok("pong"));
        let gw = Gateway::start(&config(
            driver,
            &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
        ));
        let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.main())).collect();
        for _ in 0..50 {
            for c in &mut clients {
                assert_eq!(
                    c.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").text(),
                    "pong"
                );
            }
        }
        // 200 requests over 4 client connections; each worker keeps at most
        // as many upstream connections as it ran requests at once (4 clients).
        assert_eq!(up.request_count(), 200);
        assert!(
            up.connections() <= 4,
            "{driver}: {} upstream connections for 200 requests",
            up.connections()
        );
        // Requests were spread over upstream connections without new ones.
        let conns: std::collections::HashSet<usize> =
            up.requests().iter().map(|r| r.conn).collect();
        assert_eq!(conns.len(), up.connections());
    }
}

#[test]
fn pooled_connection_closed_by_upstream_is_not_fatal() {
    // The upstream answers with a Content-Length response (no "close") and
    // then closes: the next request finds a dead pooled socket.
    let closer = Upstream::with(|r| {
        let body = format!("{} {}", r.method, r.target);
        Reply::RawThenClose(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    });
    let gw = one_worker(&format!(
        "{}{}",
        cluster("c", &[&closer], ""),
        route_all("c")
    ));
    let mut c = Client::connect(gw.main());
    for i in 0..5 {
        // Idempotent without body: if the pooled connection turns out dead,
        // it is retried on a fresh connection.
        let r = c.request(&format!("GET /g{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(r.text(), format!("GET /g{i}"));
        // Once the upstream has really closed the pooled connection, a request
        // that cannot be retried must not be sent on it: the liveness check
        // sees the close and a fresh connection is used.
        closer.wait_closed(closer.connections());
        let r = c.request(&format!(
            "POST /p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"
        ));
        assert_eq!(r.text(), format!("POST /p{i}"));
        closer.wait_closed(closer.connections());
    }
    assert_eq!(
        closer.request_count(),
        10,
        "each request reached the upstream exactly once"
    );
}

#[test]
fn refused_endpoint_is_502_then_ejected_503() {
    let dead = Upstream::refused_addr();
    let body = format!(
        "[[clusters]]\nname = \"c\"\nendpoints = [\"{dead}\"]\nmax_fails = 1\nfail_timeout = \"60s\"\n{}",
        route_all("c")
    );
    let gw = one_worker(&body);
    let started = std::time::Instant::now();
    let r = get(gw.main(), "/");
    assert_json_error(&r, 502);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refusal is immediate, not a timeout"
    );
    assert!(
        !r.text().contains(&dead.port().to_string()),
        "no internal detail"
    );
    // Ejected for fail_timeout: no usable endpoint.
    assert_json_error(&get(gw.main(), "/"), 503);
}

#[test]
fn connect_failure_moves_to_the_next_endpoint() {
    let dead = Upstream::refused_addr();
    let live = Upstream::named("live");
    let body = format!(
        "[[clusters]]\nname = \"c\"\nendpoints = [\"{dead}\", \"{}\"]\nconnect_attempts = 2\n{}",
        live.addr,
        route_all("c")
    );
    let gw = one_worker(&body);
    for _ in 0..6 {
        assert_eq!(get(gw.main(), "/").text(), "live");
    }
}

#[test]
fn hanging_upstream_is_504() {
    for driver in DRIVERS {
        let up = Upstream::new(Reply::Hang);
        let body = format!(
            "[timeouts]\nupstream_response_head = \"500ms\"\n{}{}",
            cluster("c", &[&up], ""),
            route_all("c")
        );
        let gw = Gateway::start(&config(driver, &body));
        assert_json_error(&get(gw.main(), "/"), 504);
    }
}

/// The response-head timeout runs from the end of the request: a body that
/// arrives slower than the timeout is not a timeout. The request goes on a
/// pooled connection, whose exchange counts as begun before the body.
#[test]
fn response_head_timeout_runs_from_the_end_of_the_body() {
    let up = Upstream::new(Reply::ok("done"));
    let body = format!(
        "[timeouts]\nupstream_response_head = \"1s\"\n{}{}",
        cluster("c", &[&up], ""),
        route_all("c")
    );
    let gw = one_worker(&body);
    let mut c = Client::connect(gw.main());
    assert_eq!(c.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab");
    // The slow client the test is about, not a wait for the gateway.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    c.send(b"cd");
    let r = c.read_response_to(false).expect("a response");
    assert_eq!((r.status, r.text()), (200, "done".to_string()));
    assert_eq!(
        up.connections(),
        1,
        "the POST went on the pooled connection"
    );
    assert_eq!(up.requests()[1].body, b"abcd");
}

#[test]
fn upstream_closing_without_response_is_502() {
    let up = Upstream::new(Reply::Close);
    let gw = Gateway::start(&config(
        "io_uring",
        &format!("{}{}", cluster("c", &[&up], ""), route_all("c")),
    ));
    let r = request(
        gw.main(),
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_json_error(&r, 502);
}

#[test]
fn connect_failure_keeps_a_bodyless_client_connection() {
    let dead = Upstream::refused_addr();
    let body = format!(
        "[[clusters]]\nname = \"c\"\nendpoints = [\"{dead}\"]\nmax_fails = 0\n{}",
        route_all("c")
    );
    let gw = one_worker(&body);
    let mut c = Client::connect(gw.main());
    for _ in 0..3 {
        let r = c.request("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_json_error(&r, 502);
        assert_eq!(
            r.header("connection"),
            None,
            "nothing was sent upstream: the connection stays usable"
        );
    }
    // With a body the gateway cannot know what the client still sends: close.
    let r = c.request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi");
    assert_json_error(&r, 502);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn no_retry_once_an_interim_response_was_forwarded() {
    // First request: a normal response on a keep-alive connection (pooled).
    // Second request, on that pooled connection: 103, then the upstream closes.
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let up = Upstream::with(move |_| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::ok("first")
        } else {
            Reply::RawThenClose(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".to_vec())
        }
    });
    let gw = one_worker(&format!("{}{}", cluster("c", &[&up], ""), route_all("c")));
    let mut c = Client::connect(gw.main());
    assert_eq!(
        c.request("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n").text(),
        "first"
    );
    // The response has begun (the 103 reached the client): it ends in 502,
    // and nothing is sent again on a new upstream connection.
    assert_json_error(&c.request("GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"), 502);
    assert_eq!(up.connections(), 1, "no retry after an interim response");
    assert_eq!(up.request_count(), 2);
}

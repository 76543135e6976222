//! The plain proxy path allocates nothing per request once warm: buffers,
//! header vectors and pooled upstream connections are reused, and so are
//! metrics counters, latency histograms and access-log batches. Measured
//! with the gateway's own per-worker allocation counters.

use crate::common::*;

/// Sum of the workers' allocation counters, from the admin listener.
fn allocations(gw: &Gateway) -> u64 {
    let text = get(gw.admin(), "/stats/allocations").text();
    let list = text
        .trim_start_matches(r#"{"workers":["#)
        .trim_end_matches("]}");
    list.split(',').map(|n| n.parse::<u64>().unwrap()).sum()
}

/// Runs `rounds` requests over `clients` keep-alive connections.
fn drive(clients: &mut [Client], rounds: usize, raw: &str, want: &str) {
    for _ in 0..rounds {
        for c in clients.iter_mut() {
            assert_eq!(c.request(raw).text(), want);
        }
    }
}

#[test]
fn steady_state_proxying_does_not_allocate_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let access = format!("[access_log]\ndestination = \"{}\"\n", log.display());
    for (driver, logging) in [
        ("io_uring", ""),
        ("epoll", ""),
        ("io_uring", access.as_str()),
    ] {
        let up = Upstream::new(Reply::status(
            200,
            &[("content-type", "text/plain"), ("x-a", "1")],
            "pong",
        ));
        let gw = Gateway::start(&config(
            driver,
            &format!("{logging}{}{}", cluster("c", &[&up], ""), route_all("c")),
        ));
        let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.main())).collect();
        let get_req = "GET /api/items?id=1 HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: test\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n";
        let post_req = "POST /api/items HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"name\":\"x\"}\n";

        // Warm up: connection buffers and upstream pools reach their size.
        drive(&mut clients, 100, get_req, "pong");
        drive(&mut clients, 100, post_req, "pong");
        let before = allocations(&gw);
        drive(&mut clients, 500, get_req, "pong");
        drive(&mut clients, 500, post_req, "pong");
        let after = allocations(&gw);

        let requests = 4 * 1000;
        let per_request = (after - before) as f64 / requests as f64;
        let driver = if logging.is_empty() {
            driver.to_string()
        } else {
            format!("{driver} with access log")
        };
        eprintln!(
            "{driver}: {} allocations for {requests} requests",
            after - before
        );
        assert!(
            per_request < 0.01,
            "{driver}: {} allocations for {requests} warm requests",
            after - before
        );
        assert!(before > 0, "the counters count (start-up allocates)");
        if !logging.is_empty() {
            assert_eq!(wait_file_lines(&log, 4800).len(), 4800);
        }
    }
}

#[test]
fn authenticated_requests_do_not_allocate_once_the_token_is_cached() {
    let dir = format!("{}/tests/fixtures/auth", env!("CARGO_MANIFEST_DIR"));
    let secret = std::fs::read(format!("{dir}/hs.secret")).unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "exp": exp, "scope": "read", "tenant": "acme"}),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let up = Upstream::new(Reply::ok("pong"));
    let gw = Gateway::start(&config(
        "io_uring",
        &format!(
            "[[auth.jwt]]\nname = \"idp\"\nalgorithms = [\"HS256\"]\nhmac_secret_file = \"{dir}/hs.secret\"\n\n\
             [[auth.consumers]]\nid = \"app\"\nscopes = [\"read\"]\nkeys = [{{ hash = \"{}\" }}]\n\n{}\
             [[routes]]\nname = \"r\"\nproxy = {{ cluster = \"c\" }}\n\
             auth = {{ methods = [\"jwt\", \"api_key\"], scopes = [\"read\"], forward = {{ \"x-user\" = \"subject\", \"x-tenant\" = \"claim:tenant\" }} }}\n",
            ringgate::auth::apikey::hash_key(b"app-key"),
            cluster("c", &[&up], "")
        ),
    ));
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.main())).collect();
    let with_token = format!("GET /a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
    let with_key = "GET /a HTTP/1.1\r\nHost: t\r\nX-Api-Key: app-key\r\n\r\n";
    drive(&mut clients, 100, &with_token, "pong");
    drive(&mut clients, 100, with_key, "pong");
    let before = allocations(&gw);
    drive(&mut clients, 500, &with_token, "pong");
    drive(&mut clients, 500, with_key, "pong");
    let after = allocations(&gw);
    eprintln!("auth: {} allocations for 4000 requests", after - before);
    assert!(
        after - before < 40,
        "{} allocations for 4000 authenticated warm requests",
        after - before
    );
    assert_eq!(up.wait_requests(1)[0].header("x-user"), Some("alice"));
}

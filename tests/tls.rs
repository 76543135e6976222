//! TLS termination on the real binary with real TLS clients (rustls
//! in-process; a hand-made TLS 1.1 ClientHello): TLS 1.3 and 1.2, SNI with
//! exact and wildcard names, the default certificate for unknown names or
//! a refusal, mTLS with the client identity forwarded (and client copies
//! dropped), HSTS, certificate reload without dropping connections, a
//! broken certificate refused while the old one serves, handshake timeout.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::tls::*;
use crate::common::*;

fn any_server() -> ClientSetup {
    ClientSetup {
        ca: None,
        tls12_only: false,
        identity: None,
    }
}

fn tls_config(pki: &Pki, up: &Upstream, tls_extra: &str) -> String {
    let api = pki.issue("api", &["api.test"]);
    let apps = pki.issue("apps", &["*.apps.test"]);
    config(
        "io_uring",
        &format!(
            r#"[security]
list_watch_interval = "100ms"

{cluster}
{route}"#,
            cluster = cluster("c", &[up], ""),
            route = route_all("c"),
        ),
    )
    .replace(
        "name = \"public\"\naddress = \"127.0.0.1:0\"\n",
        &format!(
            "name = \"public\"\naddress = \"127.0.0.1:0\"\n\n[listeners.tls]\nhandshake_timeout = \"500ms\"\n{tls_extra}\n\
             [[listeners.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n\
             [[listeners.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            api.cert.display(),
            api.key.display(),
            apps.cert.display(),
            apps.key.display()
        ),
    )
}

fn wait_count(gw: &Gateway, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.count_log(needle) < n {
        assert!(Instant::now() < deadline, "no {n}th {needle:?} in the log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Between requests a TLS connection parks its incoming and outgoing
/// ciphertext buffers with its plain ones, so an idle TLS client costs its
/// rustls session and its task, not the 32 KiB its last response needed.
#[test]
fn idle_tls_connections_give_their_ciphertext_buffers_back() {
    const CONNS: usize = 200;
    /// Measured: 10.7 to 11.3 KiB; 15.1 to 15.7 KiB while rustls kept a
    /// deframing buffer of its own, 49 KiB while the outgoing buffer stayed.
    const PER_CONN_CAP: u64 = 13 << 10;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let body = "x".repeat(40_000);
    let up = Upstream::new(Reply::ok(&body));
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let trusted = client_config(&ClientSetup {
        ca: Some(pki.ca_der()),
        tls12_only: false,
        identity: None,
    });
    let get = |c: &mut TlsClient| {
        let (status, _, got) = c.get("/", "api.test").unwrap();
        assert_eq!((status, got.len()), (200, body.len()));
    };
    // Both workers' pools and upstream connections are warm.
    for _ in 0..20 {
        get(&mut TlsClient::connect(gw.main(), "api.test", trusted.clone()).unwrap());
    }
    let (per_conn, mut idle) = rss_per_idle_connection(&gw, CONNS, CONNS, || {
        let mut c = TlsClient::connect(gw.main(), "api.test", trusted.clone()).unwrap();
        get(&mut c);
        c
    });
    eprintln!("{per_conn} bytes of RSS per idle TLS connection");
    assert!(
        per_conn < PER_CONN_CAP,
        "{per_conn} bytes per idle TLS connection"
    );
    // Every parked connection wakes for its next request.
    for c in &mut idle {
        get(c);
    }
}

/// The gateway decrypts client records in place in its own buffer and
/// encrypts into another (rustls's unbuffered API): records larger than a
/// read, several requests in one record, and a client's key update (which
/// the gateway must answer with its own before its next response can be
/// read) all keep one connection going, on TLS 1.3 and 1.2.
#[test]
fn large_records_pipelined_requests_and_key_updates_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::with(|r| Reply::ok(&format!("{} {:x}", r.body_len, r.body_hash)));
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    for tls12_only in [false, true] {
        let setup = ClientSetup {
            ca: Some(pki.ca_der()),
            tls12_only,
            identity: None,
        };
        let mut c = TlsClient::connect(gw.main(), "api.test", client_config(&setup)).unwrap();
        // A GET, then a POST of 100,000 bytes, in one write: seven full
        // records and a partial one, each but the first arriving while
        // the gateway still holds part of the one before.
        let body = pattern(0, 100_000);
        let mut out = format!(
            "GET /first HTTP/1.1\r\nHost: api.test\r\n\r\n\
             POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        c.tls.write_all(&out).unwrap();
        assert_eq!(c.request("").unwrap().0, 200);
        let (status, _, echoed) = c.request("").unwrap();
        let want = format!("{} {:x}", body.len(), fnv_of(&body));
        assert_eq!((status, echoed.as_str()), (200, want.as_str()));

        // Two requests in one record: both answered, in order.
        let two =
            "GET /a HTTP/1.1\r\nHost: api.test\r\n\r\nGET /b HTTP/1.1\r\nHost: api.test\r\n\r\n";
        assert_eq!(c.request(two).unwrap().0, 200);
        assert_eq!(c.request("").unwrap().0, 200);

        if !tls12_only {
            c.tls.conn.refresh_traffic_keys().unwrap();
            let (status, _, _) = c.get("/after-key-update", "api.test").unwrap();
            assert_eq!(status, 200);
        }
    }
    let seen: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    let want = ["/first", "/up", "/a", "/b", "/after-key-update"];
    let want = [&want[..], &want[..4]].concat();
    assert_eq!(seen, want);
}

#[test]
fn tls13_and_tls12_with_sni_wildcards_and_hsts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let trusted = |tls12_only| {
        client_config(&ClientSetup {
            ca: Some(pki.ca_der()),
            tls12_only,
            identity: None,
        })
    };

    // TLS 1.3, exact name, verified against the CA.
    let mut c = TlsClient::connect(gw.main(), "api.test", trusted(false)).unwrap();
    assert_eq!(c.version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let (status, head, body) = c.get("/", "api.test").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        head_field(&head, "strict-transport-security"),
        Some("max-age=31536000")
    );
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    // keep-alive over TLS: between requests the connection parks (its
    // buffers and ciphertext buffer go back to the worker's pool) and wakes
    // for the next one.
    assert_eq!(c.get("/again", "api.test").unwrap().0, 200);
    wait_metric(&gw, |m| {
        m.sum("ringgate_downstream_connections_idle", &[]) == 1.0
    });
    assert_eq!(c.get("/after-parking", "api.test").unwrap().0, 200);

    // TLS 1.2, wildcard name.
    let mut c = TlsClient::connect(gw.main(), "shop.apps.test", trusted(true)).unwrap();
    assert_eq!(c.version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(c.get("/", "shop.apps.test").unwrap().0, 200);
    // A wildcard covers one label only: a.b.apps.test gets the default
    // (api.test) certificate, which the client then refuses.
    let any = client_config(&any_server());
    let mut c = TlsClient::connect(gw.main(), "a.b.apps.test", any.clone()).unwrap();
    assert_eq!(c.get("/", "a.b.apps.test").unwrap().0, 200);
    let api_der = std::fs::read(dir.path().join("api.pem")).unwrap();
    let served = c.server_cert();
    assert!(pem_holds(&api_der, &served), "default certificate expected");
    assert!(TlsClient::connect(gw.main(), "a.b.apps.test", trusted(false)).is_err());

    // Gateway-made responses carry HSTS too.
    let mut c = TlsClient::connect(gw.main(), "api.test", trusted(false)).unwrap();
    let (status, head, _) = c.request("GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(status, 400);
    assert!(head_field(&head, "strict-transport-security").is_some());

    // Plain HTTP on the TLS port is not answered as HTTP.
    let r = std::panic::catch_unwind(|| request(gw.main(), "GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert!(r.is_err() || r.unwrap().status == 0);

    let m = scrape(&gw);
    // Four handshakes completed; the plain-HTTP one failed (the client
    // refusing the default certificate may not have been counted yet).
    assert_eq!(
        m.sum("ringgate_tls_handshakes_total", &[("result", "ok")]),
        4.0
    );
    assert!(m.sum("ringgate_tls_handshakes_total", &[("result", "error")]) >= 1.0);
    assert!(m.has("ringgate_tls_certificate_expiry_timestamp_seconds"));
}

/// Whether a PEM file holds this DER certificate.
fn pem_holds(pem: &[u8], der: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .any(|c| c.as_ref() == der)
}

#[test]
fn a_tls_connection_closing_after_its_response_sends_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let setup = ClientSetup {
        ca: Some(pki.ca_der()),
        tls12_only: false,
        identity: None,
    };
    let mut c = TlsClient::connect(gw.main(), "api.test", client_config(&setup)).unwrap();
    let (status, _, body) = c
        .request("GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    // A clean end: rustls reads close_notify as end of stream, and a bare
    // TCP close as an error (a possible truncation).
    let mut rest = Vec::new();
    assert_eq!(c.tls.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn unknown_names_can_be_refused_and_tls_1_1_never_is_spoken() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        "unknown_sni = \"reject\"\nmin_version = \"1.3\"\n",
    ));
    let any = client_config(&any_server());
    assert!(TlsClient::connect(gw.main(), "api.test", any.clone()).is_ok());
    assert!(TlsClient::connect(gw.main(), "other.test", any).is_err());
    // min_version = "1.3": a TLS 1.2 client fails.
    let tls12 = client_config(&ClientSetup {
        ca: None,
        tls12_only: true,
        identity: None,
    });
    assert!(TlsClient::connect(gw.main(), "api.test", tls12).is_err());

    // A TLS 1.1 ClientHello (no supported_versions) gets an alert.
    let mut s = std::net::TcpStream::connect(gw.main()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x11; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // suites
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    s.write_all(&record).unwrap();
    let mut answer = [0u8; 7];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 0x15, "an alert record, not a ServerHello");
    assert_eq!(answer[5], 2, "fatal");
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "then closed");
}

#[test]
fn mutual_tls_forwards_the_verified_identity_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let clients = Pki::new(dir.path(), "clients");
    let strangers = Pki::new(dir.path(), "strangers");
    let alice = clients.issue("alice", &["alice.clients.test"]);
    let mallory = strangers.issue("mallory", &["alice.clients.test"]);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        &format!(
            "client_auth = \"required\"\nclient_ca_file = \"{}\"\nforward_client_cert = {{ \"x-client-subject\" = \"subject\", \"x-client-san\" = \"san\" }}\n",
            clients.ca_file("clients").display()
        ),
    ));
    let with = |identity: Option<&Issued>| {
        client_config(&ClientSetup {
            ca: Some(pki.ca_der()),
            tls12_only: false,
            identity: identity.map(|i| (i.cert.clone(), i.key.clone())),
        })
    };
    let refused = |config| {
        // TLS 1.3: the client learns of the refusal on its first read.
        match TlsClient::connect(gw.main(), "api.test", config) {
            Err(_) => true,
            Ok(mut c) => c.get("/", "api.test").is_err(),
        }
    };
    assert!(refused(with(None)), "no client certificate");
    assert!(refused(with(Some(&mallory))), "untrusted issuer");
    assert_eq!(up.request_count(), 0);

    let mut c = TlsClient::connect(gw.main(), "api.test", with(Some(&alice))).unwrap();
    let (status, _, _) = c
        .request(
            "GET / HTTP/1.1\r\nHost: api.test\r\nX-Client-Subject: CN=admin\r\nX-Client-San: DNS:admin\r\n\r\n",
        )
        .unwrap();
    assert_eq!(status, 200);
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header_count("x-client-subject"), 1);
    assert_eq!(
        seen[0].header("x-client-subject"),
        Some("CN=alice.clients.test")
    );
    assert_eq!(
        seen[0].header("x-client-san"),
        Some("DNS:alice.clients.test")
    );
}

#[test]
fn certificates_reload_without_dropping_connections_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    // A new client config per connection: no resumed session hides which
    // certificate the server has.
    let any = || client_config(&any_server());
    let mut kept = TlsClient::connect(gw.main(), "api.test", any()).unwrap();
    let before = kept.server_cert();
    assert_eq!(kept.get("/", "api.test").unwrap().0, 200);

    // A renewed certificate in place of the old one: the file watcher
    // reloads the config by itself.
    let renewed = pki.issue("api", &["api.test"]);
    // Logged once every worker serves the new config.
    wait_count(&gw, "config reloaded", 1);
    let fresh = TlsClient::connect(gw.main(), "api.test", any()).unwrap();
    assert_eq!(fresh.server_cert(), renewed.der);
    assert_ne!(fresh.server_cert(), before);
    assert_eq!(
        kept.get("/", "api.test").unwrap().0,
        200,
        "old connection kept"
    );

    // A key that does not match, reloaded through the admin listener:
    // refused, the renewed certificate keeps serving.
    std::fs::copy(dir.path().join("apps.key"), dir.path().join("api.key")).unwrap();
    let r = request(
        gw.admin(),
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 202);
    let line = gw.wait_log("does not match");
    assert!(line.contains("api.key"), "{line}");
    let still = TlsClient::connect(gw.main(), "api.test", any()).unwrap();
    assert_eq!(still.server_cert(), renewed.der);

    // An expired certificate is refused too.
    pki.issue_with("api", &["api.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    gw.signal("HUP");
    gw.wait_log("has expired");
    let still = TlsClient::connect(gw.main(), "api.test", any()).unwrap();
    assert_eq!(still.server_cert(), renewed.der);
    assert_eq!(kept.get("/", "api.test").unwrap().0, 200);
}

#[test]
fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let mut s = std::net::TcpStream::connect(gw.main()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(15));
    let m = scrape(&gw);
    assert_eq!(
        m.sum("ringgate_tls_handshakes_total", &[("result", "error")]),
        1.0
    );
}

#[test]
fn routes_can_require_the_client_certificate_as_credential() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let clients = Pki::new(dir.path(), "clients");
    let alice = clients.issue("alice", &["alice.clients.test"]);
    let bob = clients.issue("bob", &["bob.clients.test"]);
    let up = Upstream::named("ok");
    let routes = r#"[[routes]]
name = "private"
match = { path = "/private" }
proxy = { cluster = "c" }
auth = { methods = ["mtls"], claims = [{ name = "cn", equals = "alice.clients.test" }], forward = { "x-user" = "subject" } }
"#;
    let text = tls_config(
        &pki,
        &up,
        &format!(
            "client_auth = \"optional\"\nclient_ca_file = \"{}\"\n",
            clients.ca_file("clients").display()
        ),
    )
    .replace(
        "[[routes]]\nname = \"all\"",
        &format!("{routes}\n[[routes]]\nname = \"all\""),
    );
    let gw = Gateway::start(&text);
    let with = |identity: Option<&Issued>| {
        let config = client_config(&ClientSetup {
            ca: Some(pki.ca_der()),
            tls12_only: false,
            identity: identity.map(|i| (i.cert.clone(), i.key.clone())),
        });
        TlsClient::connect(gw.main(), "api.test", config).unwrap()
    };

    // Optional: no certificate is fine for routes that do not ask for one.
    let mut anonymous = with(None);
    assert_eq!(anonymous.get("/public", "api.test").unwrap().0, 200);
    let (status, head, _) = anonymous.get("/private", "api.test").unwrap();
    assert_eq!(status, 401);
    assert!(head_field(&head, "www-authenticate").is_some());

    let (status, _, _) = with(Some(&alice)).get("/private", "api.test").unwrap();
    assert_eq!(status, 200);
    let seen = up.wait_requests(2);
    assert_eq!(seen[1].header("x-user"), Some("CN=alice.clients.test"));

    // A valid certificate that fails the route's claim rule: 403.
    assert_eq!(with(Some(&bob)).get("/private", "api.test").unwrap().0, 403);
    assert_eq!(up.request_count(), 2);
}

#[test]
fn a_redirect_listener_sends_known_hosts_to_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let text = format!(
        "{}\n[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
         [listeners.redirect_https]\nport = 8443\nhosts = [\"www.test\"]\n",
        tls_config(&pki, &up, "")
    );
    // One worker: both listeners' connections take their buffers (and the
    // gateway-made responses' fields rendered in them) from one pool.
    let gw = Gateway::start(&text.replace("workers = 2", "workers = 1"));
    // A gateway-made response (no Host: 400) over TLS carries HSTS.
    let refused_with_hsts = |t: &mut TlsClient| {
        let (status, head, _) = t.request("GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(status, 400);
        assert!(head_field(&head, "strict-transport-security").is_some());
    };
    let any = client_config(&any_server());
    let mut t = TlsClient::connect(gw.addr("public"), "api.test", any.clone()).unwrap();
    refused_with_hsts(&mut t);
    drop(t);
    let mut c = Client::connect(gw.addr("http"));
    let r = c.request("GET /a/b?x=1&y=%2F HTTP/1.1\r\nHost: API.test\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://api.test:8443/a/b?x=1&y=%2F")
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.header("strict-transport-security"), None, "not over TLS");
    // Same connection: a certificate's wildcard name and a listed name.
    let r = c.request("HEAD /s HTTP/1.1\r\nHost: shop.apps.test\r\n\r\n");
    assert_eq!(r.header("location"), Some("https://shop.apps.test:8443/s"));
    let r = c.request("GET / HTTP/1.1\r\nHost: www.test:80\r\n\r\n");
    assert_eq!(r.header("location"), Some("https://www.test:8443/"));

    // Never an open redirect: an unknown host gets 421, no host 400.
    let r = c.request("GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_json_error(&r, 421);
    assert_eq!(r.header("location"), None);
    let r = request(
        gw.addr("http"),
        "GET http://evil.example/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
    );
    assert_json_error(&r, 421);
    assert_json_error(&request(gw.addr("http"), "GET / HTTP/1.0\r\n\r\n"), 400);

    // A request with a body is redirected, then the connection closes.
    let mut c = Client::connect(gw.addr("http"));
    let r = c.request("POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());

    // The TLS listener itself still serves, and its own responses still
    // carry HSTS.
    let mut t = TlsClient::connect(gw.addr("public"), "api.test", any).unwrap();
    assert_eq!(t.get("/", "api.test").unwrap().0, 200);
    assert_eq!(up.request_count(), 1, "redirects never reach the upstream");
    refused_with_hsts(&mut t);
}

#[test]
fn a_proxy_protocol_header_may_precede_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let up = Upstream::named("ok");
    let text = tls_config(&pki, &up, "").replace(
        "name = \"public\"\naddress = \"127.0.0.1:0\"\n",
        "name = \"public\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n",
    );
    let gw = Gateway::start(&text);
    let any = || client_config(&any_server());
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 443\r\n";
    let mut c = TlsClient::connect_after(gw.main(), header, "api.test", any()).unwrap();
    assert_eq!(c.get("/", "api.test").unwrap().0, 200);
    let seen = up.wait_requests(1);
    assert_eq!(seen[0].header("x-forwarded-for"), Some("203.0.113.7"));
    // Without the header the ClientHello is not a PROXY header: closed.
    assert!(TlsClient::connect(gw.main(), "api.test", any()).is_err());
    assert_eq!(up.request_count(), 1);
}

/// Runs curl against the gateway; returns its exit code and output.
fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-"])
        .args(args)
        .output()
        .expect("curl runs (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn curl_speaks_tls13_tls12_and_mutual_tls_with_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let clients = Pki::new(dir.path(), "clients");
    let alice = clients.issue("alice", &["alice.clients.test"]);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        &format!(
            "client_auth = \"optional\"\nclient_ca_file = \"{}\"\nforward_client_cert = {{ \"x-client-subject\" = \"subject\" }}\n",
            clients.ca_file("clients").display()
        ),
    ));
    let port = gw.main().port();
    let resolve = format!("api.test:{port}:127.0.0.1");
    let url = format!("https://api.test:{port}/");
    let ca = pki.ca_file("server");
    let ca = ca.to_str().unwrap();
    let base = ["--cacert", ca, "--resolve", &resolve];

    for version in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"]] {
        let args: Vec<&str> = base
            .iter()
            .chain(version)
            .chain([&url.as_str()])
            .copied()
            .collect();
        let (code, out) = curl(&args);
        assert_eq!(code, 0, "{version:?}: {out}");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("strict-transport-security: max-age="),
            "{out}"
        );
        assert!(out.ends_with("ok"), "{out}");
    }
    // A client certificate: its subject reaches the upstream.
    let (cert, key) = (alice.cert.to_str().unwrap(), alice.key.to_str().unwrap());
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--cert", cert, "--key", key, &url])
        .collect();
    let (code, out) = curl(&args);
    assert_eq!(code, 0, "{out}");
    let seen = up.wait_requests(3);
    assert_eq!(seen[0].header("x-client-subject"), None);
    assert_eq!(
        seen[2].header("x-client-subject"),
        Some("CN=alice.clients.test")
    );
    // curl trusting another CA refuses the gateway's certificate.
    let other = clients.ca_file("clients");
    let (code, _) = curl(&[
        "--cacert",
        other.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert_eq!(code, 60, "certificate problem");
    assert_eq!(up.request_count(), 3);
}

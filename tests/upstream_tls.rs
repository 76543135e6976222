//! TLS from the gateway to upstreams, against a real rustls test upstream
//! with certificates from a test CA: verification against a CA file, the
//! system roots (which do not trust the test CA) and an endpoint's IP
//! address; SNI; the gateway's client certificate; pooled TLS connections
//! reused; failures answered 502 and counted as `kind="tls"`;
//! `insecure_skip_verify` warned about.

use crate::common::tls::*;
use crate::common::*;

#[test]
fn upstream_tls_verifies_the_server_and_presents_the_gateway_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new(dir.path(), "upstreams");
    let strangers = Pki::new(dir.path(), "strangers");
    let gateways = Pki::new(dir.path(), "gateways");
    let served = servers.issue("svc", &["svc.test", "127.0.0.1"]);
    let gw_cert = gateways.issue("gw", &["gw.test"]);
    let up = TlsUpstream::new(&served, Some(&gateways), |_| Reply::ok("secret"));
    let ep = up.http.addr;
    let identity = format!(
        "cert_file = \"{}\", key_file = \"{}\"",
        gw_cert.cert.display(),
        gw_cert.key.display()
    );
    let ca = |pki: &Pki, name: &str| format!("ca_file = \"{}\"", pki.ca_file(name).display());
    let clusters = [
        (
            "verified",
            format!(
                "tls = {{ server_name = \"svc.test\", {}, {identity} }}",
                ca(&servers, "upstreams")
            ),
        ),
        (
            "by_ip",
            format!("tls = {{ {}, {identity} }}", ca(&servers, "upstreams")),
        ),
        ("system", "tls = true".to_string()),
        (
            "wrong_name",
            format!(
                "tls = {{ server_name = \"other.test\", {}, {identity} }}",
                ca(&servers, "upstreams")
            ),
        ),
        (
            "wrong_ca",
            format!("tls = {{ {}, {identity} }}", ca(&strangers, "strangers")),
        ),
        (
            "no_cert",
            format!("tls = {{ {} }}", ca(&servers, "upstreams")),
        ),
        (
            "insecure",
            format!("tls = {{ insecure_skip_verify = true, {identity} }}"),
        ),
        ("plain", String::new()),
    ];
    let mut body = String::new();
    for (name, tls) in &clusters {
        body.push_str(&format!(
            "[[clusters]]\nname = \"{name}\"\nendpoints = [\"{ep}\"]\n{tls}\n\n"
        ));
    }
    for (name, _) in &clusters {
        body.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmatch = {{ segment_prefix = \"/{name}\" }}\nproxy = {{ cluster = \"{name}\" }}\n\n"
        ));
    }
    let gw = Gateway::start(&config("io_uring", &body));
    let warning = gw.wait_log("NOT verified");
    assert!(warning.contains("insecure"), "{warning}");

    // Verified against the CA file, SNI sent, the gateway's certificate
    // presented, and one pooled TLS connection for five requests.
    let mut c = Client::connect(gw.main());
    for _ in 0..5 {
        let r = c.get("/verified/x");
        assert_eq!((r.status, r.text().as_str()), (200, "secret"));
    }
    let seen = up.http.wait_requests(5);
    assert!(
        seen.iter().all(|r| r.conn == seen[0].conn),
        "one connection"
    );
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    let hs = up.handshakes();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].sni.as_deref(), Some("svc.test"));
    assert_eq!(hs[0].client_cert.as_ref(), Some(&gw_cert.der));

    // No server_name: the endpoint's IP address is verified (IP SAN) and
    // not sent as SNI.
    assert_eq!(c.get("/by_ip").status, 200);
    let hs = up.handshakes();
    assert_eq!(hs.len(), 2);
    assert_eq!(hs[1].sni, None);

    // Unverifiable upstreams: 502, never their response.
    for name in ["system", "wrong_name", "wrong_ca", "no_cert"] {
        let r = get(gw.main(), &format!("/{name}"));
        assert_json_error(&r, 502);
        assert!(!r.text().contains("secret"), "{name}");
    }
    // A plain request to a TLS port fails too.
    assert_json_error(&get(gw.main(), "/plain"), 502);
    assert_eq!(up.http.request_count(), 6);

    // Verification off: served, with the gateway's certificate.
    assert_eq!(get(gw.main(), "/insecure").status, 200);
    assert_eq!(up.http.request_count(), 7);

    let m = scrape(&gw);
    for name in ["system", "wrong_name", "wrong_ca"] {
        assert_eq!(
            m.sum(
                "ringgate_upstream_errors_total",
                &[("cluster", name), ("kind", "tls")]
            ),
            1.0,
            "{name}"
        );
    }
    assert_eq!(
        m.sum(
            "ringgate_upstream_connections_opened_total",
            &[("cluster", "verified")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "ringgate_upstream_connections_reused_total",
            &[("cluster", "verified")]
        ),
        4.0
    );
}

#[test]
fn bad_upstream_tls_settings_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new(dir.path(), "upstreams");
    let gw_cert = servers.issue("gw", &["gw.test"]);
    let cases = [
        (
            format!(
                "tls = {{ ca_file = \"{}\", insecure_skip_verify = true }}",
                servers.ca_file("upstreams").display()
            ),
            "clusters[0].tls.insecure_skip_verify",
        ),
        (
            "tls = { ca_file = \"missing-ca.pem\" }".to_string(),
            "clusters[0].tls.ca_file",
        ),
        (
            format!("tls = {{ cert_file = \"{}\" }}", gw_cert.cert.display()),
            "clusters[0].tls.key_file",
        ),
        (
            "tls = { server_name = \"not a name\" }".to_string(),
            "clusters[0].tls.server_name",
        ),
        (
            "tls = { verify = false }".to_string(),
            "clusters[0].tls.verify",
        ),
    ];
    for (tls, key) in cases {
        let text = config(
            "epoll",
            &format!(
                "[[clusters]]\nname = \"c\"\nendpoints = [\"127.0.0.1:9\"]\n{tls}\n\n{}",
                route_all("c")
            ),
        );
        let err = Gateway::try_start(&text).err().expect("refused");
        assert!(err.contains(key), "{key}: {err}");
    }
}

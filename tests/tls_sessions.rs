//! TLS key choice and session resumption on the real binary: an RSA and
//! an ECDSA certificate for one name, each served to the client that can
//! verify only its signatures; sessions resumed with tickets whichever
//! worker a connection lands on.

use crate::common::tls::*;
use crate::common::*;

fn two_keys_config(rsa: &Issued, ecdsa: &Issued, up: &Upstream) -> String {
    let mut text = config(
        "io_uring",
        &format!("{}{}", cluster("c", &[up], ""), route_all("c")),
    );
    let tls = format!(
        "\n[listeners.tls]\n\
         [[listeners.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [[listeners.tls.certificates]]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n",
        rsa.cert.display(),
        rsa.key.display(),
        ecdsa.cert.display(),
        ecdsa.key.display()
    );
    let at = text.find("[[clusters]]").unwrap();
    text.insert_str(at, &tls);
    text
}

#[test]
fn rsa_and_ecdsa_certificates_for_one_name_go_to_the_clients_that_can_use_them() {
    use rustls::SignatureScheme as S;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let rsa = pki.issue_rsa("api-rsa", &["api.test"]);
    let ecdsa = pki.issue("api-ec", &["api.test"]);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&two_keys_config(&rsa, &ecdsa, &up));

    let rsa_only = client_offering(&[S::RSA_PSS_SHA256, S::RSA_PKCS1_SHA256]);
    let mut c = TlsClient::connect(gw.main(), "api.test", rsa_only).unwrap();
    assert_eq!(c.server_cert(), rsa.der);
    assert_eq!(c.get("/", "api.test").unwrap().0, 200);

    let ecdsa_only = client_offering(&[S::ECDSA_NISTP256_SHA256]);
    let mut c = TlsClient::connect(gw.main(), "api.test", ecdsa_only).unwrap();
    assert_eq!(c.server_cert(), ecdsa.der);
    assert_eq!(c.get("/", "api.test").unwrap().0, 200);
}

#[test]
fn sessions_resume_on_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "server");
    let ecdsa = pki.issue("api", &["api.test"]);
    let rsa = pki.issue_rsa("api-rsa", &["api.test"]);
    let up = Upstream::named("ok");
    let gw = Gateway::start(&two_keys_config(&rsa, &ecdsa, &up));
    // One client config: its session store carries each connection's
    // ticket to the next connection.
    let config = client_config(&ClientSetup {
        ca: Some(pki.ca_der()),
        tls12_only: false,
        identity: None,
    });
    let first = TlsClient::connect(gw.main(), "api.test", config.clone()).unwrap();
    assert!(!first.resumed());
    let mut first = first;
    assert_eq!(first.get("/", "api.test").unwrap().0, 200);
    drop(first);
    // Connections spread over both workers by the kernel's SO_REUSEPORT
    // hash; every one of them resumes the previous one's session. 40
    // connections all landing on one worker has odds of 2^-39.
    for i in 0..40 {
        let mut c = TlsClient::connect(gw.main(), "api.test", config.clone()).unwrap();
        assert_eq!(c.get("/", "api.test").unwrap().0, 200, "connection {i}");
        assert!(c.resumed(), "connection {i} was a full handshake");
    }
    let m = scrape(&gw);
    for worker in ["0", "1"] {
        assert!(
            m.sum(
                "ringgate_tls_handshakes_total",
                &[("worker", worker), ("result", "ok")]
            ) >= 1.0,
            "worker {worker} resumed no session"
        );
    }
}

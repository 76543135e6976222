//! Test certificates (generated per test with rcgen: a CA, server and
//! client certificates), a blocking rustls client, and a TLS test
//! upstream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A test CA that issues certificates into a directory.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate's files and DER.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    pub fn ca_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.pem"))
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A certificate for `sans` (CN = the first), written as
    /// `<stem>.pem` (leaf then CA) and `<stem>.key`.
    pub fn issue(&self, stem: &str, sans: &[&str]) -> Issued {
        self.issue_with(stem, sans, |_| {})
    }

    /// A certificate for a 2048-bit RSA key (made by openssl: the test
    /// crypto backend signs with RSA keys but does not generate them).
    pub fn issue_rsa(&self, stem: &str, sans: &[&str]) -> Issued {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl runs (.ci/run installs it)");
        assert!(out.status.success(), "openssl genpkey failed");
        let key = KeyPair::from_pem(&String::from_utf8(out.stdout).unwrap()).unwrap();
        self.issue_signed(stem, sans, key, |_| {})
    }

    pub fn issue_with(
        &self,
        stem: &str,
        sans: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        self.issue_signed(stem, sans, KeyPair::generate().unwrap(), tweak)
    }

    fn issue_signed(
        &self,
        stem: &str,
        sans: &[&str],
        key: KeyPair,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, sans.first().copied().unwrap_or(stem));
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (to see which one was served); with
/// `schemes`, offers only those signature schemes.
#[derive(Debug)]
struct AnyServer {
    schemes: Option<Vec<rustls::SignatureScheme>>,
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        match &self.schemes {
            Some(s) => s.clone(),
            None => provider()
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}

/// How a test client connects.
pub struct ClientSetup {
    /// Trusted CA; `None` accepts any server certificate.
    pub ca: Option<CertificateDer<'static>>,
    pub tls12_only: bool,
    /// A client certificate: chain file and key file.
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub fn client_config(setup: &ClientSetup) -> Arc<rustls::ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if setup.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match &setup.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer { schemes: None })),
    };
    let mut config = match &setup.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS 1.3 client that accepts any certificate and can verify only
/// these signature schemes (so a server must pick a key that makes one).
pub fn client_offering(schemes: &[rustls::SignatureScheme]) -> Arc<rustls::ClientConfig> {
    let verifier = AnyServer {
        schemes: Some(schemes.to_vec()),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// A blocking TLS connection to the gateway.
pub struct TlsClient {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects and completes the handshake.
    pub fn connect(
        addr: SocketAddr,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsClient, std::io::Error> {
        Self::connect_after(addr, b"", sni, config)
    }

    /// Sends `prefix` (a PROXY protocol header, say), then connects.
    pub fn connect_after(
        addr: SocketAddr,
        prefix: &[u8],
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsClient, std::io::Error> {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.write_all(prefix)?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient { tls })
    }

    /// The certificate the server presented.
    pub fn server_cert(&self) -> CertificateDer<'static> {
        self.tls.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// The handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.conn.protocol_version()
    }

    /// Sends `raw` and reads one Content-Length response: (status, head,
    /// body).
    pub fn request(&mut self, raw: &str) -> std::io::Result<(u16, String, String)> {
        self.tls.write_all(raw.as_bytes())?;
        self.tls.flush()?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if self.tls.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let status = head[9..12].parse().unwrap();
        let len = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.tls.read_exact(&mut body)?;
        Ok((status, head, String::from_utf8_lossy(&body).to_string()))
    }

    pub fn get(&mut self, path: &str, host: &str) -> std::io::Result<(u16, String, String)> {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
    }
}

/// The value of header `name` in a response head.
pub fn head_field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What a TLS test upstream saw in one completed handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub sni: Option<String>,
    pub client_cert: Option<CertificateDer<'static>>,
}

/// The recording test upstream behind a rustls server.
pub struct TlsUpstream {
    pub http: super::Upstream,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
}

impl TlsUpstream {
    /// Serves `issued`; with `clients`, requires a client certificate
    /// issued by that CA.
    pub fn new(
        issued: &Issued,
        clients: Option<&Pki>,
        handler: impl Fn(&super::Recorded) -> super::Reply + Send + Sync + 'static,
    ) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(&issued.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&issued.key).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match clients {
            Some(pki) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(pki.ca_der()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(builder.with_single_cert(chain, key).unwrap());
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let http = super::Upstream::serving(handler, move |mut tcp, id, st| {
            tcp.set_nodelay(true).unwrap();
            let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    return;
                }
            }
            seen.lock().unwrap().push(Handshake {
                sni: conn.server_name().map(str::to_owned),
                client_cert: conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned()),
            });
            super::serve_http(rustls::StreamOwned::new(conn, tcp), id, st);
        });
        TlsUpstream { http, handshakes }
    }

    pub fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

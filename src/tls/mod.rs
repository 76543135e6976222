//! TLS termination: per-listener rustls configurations built at config
//! load (so a reload swaps certificates, and a bad certificate refuses the
//! reload while the old one keeps serving), certificate choice by SNI, the
//! client-certificate identity, and the connection adapters
//! (`server_stream.rs` for clients, over rustls's unbuffered API;
//! `stream.rs` for upstreams).
//!
//! Protocols: TLS 1.3 and 1.2 (rustls offers only AEAD suites with
//! forward secrecy, Mozilla's "intermediate"), or 1.3 alone. Session
//! tickets are sealed with one process-wide rotating key, so a resumed
//! connection works on whichever core it lands, and across reloads.

pub mod client;
pub mod server_stream;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

pub use server_stream::ServerStream;
pub use stream::TlsStream;

/// The server side of one TLS listener.
#[derive(Debug)]
pub struct TlsListener {
    pub server: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
    /// `strict-transport-security` line for every response, when on.
    pub hsts: Box<[u8]>,
    /// Client-certificate fields forwarded to upstreams: lowercase header
    /// name and what it carries.
    pub forward: Box<[(Box<[u8]>, CertField)]>,
    pub certificates: Vec<CertInfo>,
}

/// What a forwarded client-certificate header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    /// The subject distinguished name (RFC 4514 string).
    Subject,
    /// The subject alternative names (DNS, URI, email), comma-separated.
    San,
}

/// A loaded certificate, for the expiry metric and logs.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// As configured.
    pub file: String,
    pub names: Vec<String>,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

/// Whether an unknown (or absent) SNI name gets the default certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    Default,
    Reject,
}

/// Client-certificate authentication of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The process-wide ticket sealer (rotating keys), shared by every
/// listener, worker and config generation.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let t = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(TICKETER.get_or_init(|| t).clone())
}

/// One certificate chain with its key, and the names it serves.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Reads a PEM chain and key; refuses a key that does not match, and a
/// leaf certificate that has expired at `now` (seconds since the epoch).
///
/// # Errors
/// A message naming the file and what is wrong with it.
pub fn load_cert(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
    configured: &str,
    now: i64,
) -> Result<LoadedCert, String> {
    let shown = |p: &std::path::Path| p.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", shown(cert_file)))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{}: no certificate in the file", shown(cert_file)));
    };
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{}: {e}", shown(key_file)))?;
    let (names, not_after) = leaf_facts(leaf).map_err(|e| format!("{}: {e}", shown(cert_file)))?;
    if not_after <= now {
        return Err(format!("{}: the certificate has expired", shown(cert_file)));
    }
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", shown(key_file)))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{}: the key does not match the certificate {}",
            shown(key_file),
            shown(cert_file)
        )
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        info: CertInfo {
            file: configured.to_string(),
            names,
            not_after,
        },
    })
}

/// The DNS names (SANs, else the CN) and `notAfter` of a certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// A verified client certificate (DER) as a principal: the subject DN
/// (RFC 4514 form) is the subject; claims `subject`, `cn` and `san` (an
/// array of `DNS:..`, `URI:..`, `email:..`) serve routes' claim rules,
/// identity headers and `forward_client_cert`.
pub fn client_principal(der: &[u8]) -> Option<crate::auth::Principal> {
    use serde_json::Value;
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject().to_string();
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            let name = match n {
                GeneralName::DNSName(s) => format!("DNS:{s}"),
                GeneralName::URI(s) => format!("URI:{s}"),
                GeneralName::RFC822Name(s) => format!("email:{s}"),
                _ => continue,
            };
            sans.push(Value::String(name));
        }
    }
    let mut claims = serde_json::Map::new();
    claims.insert("subject".into(), Value::String(subject.clone()));
    if let Some(Ok(cn)) = cert.subject().iter_common_name().next().map(|c| c.as_str()) {
        claims.insert("cn".into(), Value::String(cn.into()));
    }
    claims.insert("san".into(), Value::Array(sans));
    let mut p = crate::auth::Principal::from_claims(claims, "groups", "mtls");
    p.subject = subject.into();
    Some(p)
}

/// Certificates by SNI name: exact names, then `*.suffix` wildcards (one
/// label), then the default (the listener's first certificate) unless
/// unknown names are rejected. Of several certificates for a name (RSA and
/// ECDSA), the first whose key can sign with a scheme the client offers.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn add(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for n in names {
            match n.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()),
                None => self.exact.entry(n.clone()),
            }
            .or_default()
            .push(key.clone());
        }
    }

    pub fn set_default(&mut self, key: Option<Arc<CertifiedKey>>) {
        self.default = key;
    }

    fn pick(
        &self,
        name: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let usable = |list: &Vec<Arc<CertifiedKey>>| {
            list.iter()
                .find(|k| k.key.choose_scheme(schemes).is_some())
                .or_else(|| list.first())
                .cloned()
        };
        if let Some(name) = name {
            let name = name.to_ascii_lowercase();
            if let Some(list) = self.exact.get(&name) {
                return usable(list);
            }
            if let Some(list) = name
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return usable(list);
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name(), hello.signature_schemes())
    }
}

/// The protocol versions offered: TLS 1.3 and 1.2, or 1.3 alone.
pub fn versions(tls13_only: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    if tls13_only {
        &TLS13
    } else {
        &BOTH
    }
}

/// Builds a listener's rustls configuration.
///
/// # Errors
/// A message for the config diagnostic.
pub fn server_config(
    resolver: SniResolver,
    tls13_only: bool,
    client_auth: ClientAuth,
    client_roots: Option<rustls::RootCertStore>,
) -> Result<rustls::ServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls13_only))
        .map_err(|e| e.to_string())?;
    let builder = match (client_auth, client_roots) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(roots)) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // The seam for h2: add it here once the connection speaks it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer()?;
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// Reads a PEM bundle of trusted CA certificates.
///
/// # Errors
/// A message naming the file.
pub fn load_roots(file: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", file.display()));
    }
    Ok(roots)
}

/// The identity header lines for a handshake's verified client
/// certificate.
pub fn render_client_cert(
    forward: &[(Box<[u8]>, CertField)],
    cert: &crate::auth::Principal,
    out: &mut Vec<u8>,
) {
    let mut san = String::new();
    if forward.iter().any(|(_, f)| *f == CertField::San) {
        let names = cert.claims.get("san").and_then(serde_json::Value::as_array);
        for (i, n) in names
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .enumerate()
        {
            if i > 0 {
                san.push_str(", ");
            }
            san.push_str(n);
        }
    }
    for (name, field) in forward {
        let value: &str = match field {
            CertField::Subject => &cert.subject,
            CertField::San => &san,
        };
        if value.is_empty() || value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

//! TLS to upstreams: a cluster's rustls client configuration, built at
//! config load (trusted roots, an optional gateway certificate), and the
//! verifier behind the loudly named `insecure_skip_verify`.
//!
//! Session resumption uses rustls's in-memory store, shared by the
//! workers: it is touched once per new upstream connection, never per
//! request, and pooled connections make new ones rare.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::provider;

/// A cluster's TLS settings.
#[derive(Debug)]
pub struct UpstreamTls {
    pub client: Arc<rustls::ClientConfig>,
    /// The configured SNI and verified name; endpoints' host names otherwise.
    pub server_name: Option<ServerName<'static>>,
    /// Verification is off (`insecure_skip_verify`).
    pub insecure: bool,
}

/// Whom the upstream certificate must be issued by.
pub enum Trust {
    Roots(rustls::RootCertStore),
    /// Any certificate (only its handshake signature is checked).
    Anyone,
}

/// Builds a cluster's client configuration.
///
/// # Errors
/// A message for the config diagnostic.
pub fn client_config(
    trust: Trust,
    identity: Option<Arc<CertifiedKey>>,
    tls13_only: bool,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(super::versions(tls13_only))
        .map_err(|e| e.to_string())?;
    let builder = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots),
        Trust::Anyone => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate)),
    };
    let mut config = match identity {
        Some(key) => builder.with_client_cert_resolver(Arc::new(OneCertificate(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The host-name part of an endpoint's `host:port` as a server name (a DNS
/// name, or an IP address, which rustls verifies against IP SANs and does
/// not send as SNI).
pub fn endpoint_server_name(host_port: &str) -> Option<ServerName<'static>> {
    let host = match host_port.rsplit_once(':') {
        Some((h, _)) => h,
        None => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_ascii_lowercase()).ok()
}

/// The operating system's trusted CAs (`/etc/ssl/certs` on Debian).
///
/// # Errors
/// When the store cannot be read or holds no usable certificate.
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(format!(
            "no system CA certificates ({why}); install ca-certificates or set ca_file"
        ));
    }
    Ok(roots)
}

/// Presents the one gateway certificate a cluster is configured with.
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OneCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `insecure_skip_verify`: any certificate for any name. The handshake
/// signature is still checked, which proves only that the peer holds the
/// key of the certificate it showed, not who it is.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_host_names_become_server_names() {
        let name = |s| endpoint_server_name(s).map(|n| n.to_str().into_owned());
        assert_eq!(
            name("Billing.internal:8443").as_deref(),
            Some("billing.internal")
        );
        assert_eq!(name("10.0.0.5:443").as_deref(), Some("10.0.0.5"));
        assert_eq!(name("[::1]:443").as_deref(), Some("::1"));
        assert!(matches!(
            endpoint_server_name("10.0.0.5:443"),
            Some(ServerName::IpAddress(_))
        ));
    }
}

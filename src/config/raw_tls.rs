//! A listener's `tls` table as serde reads it.

use serde::Deserialize;

use super::defaults as d;
use super::units::Duration;

/// `[listeners.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Chains and keys; the first is the default certificate.
    pub certificates: Vec<RawCertificate>,
    /// "default" (serve the first certificate) or "reject" (fail the
    /// handshake) for SNI names no certificate covers, and for no SNI.
    #[serde(default = "d::tls_unknown_sni")]
    pub unknown_sni: String,
    /// "1.2" (TLS 1.3 and 1.2) or "1.3".
    #[serde(default = "d::tls_min_version")]
    pub min_version: String,
    #[serde(default = "d::tls_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// "none", "optional" or "required".
    #[serde(default = "d::tls_client_auth")]
    pub client_auth: String,
    /// Trusted CAs for client certificates (PEM bundle).
    pub client_ca_file: Option<String>,
    /// Upstream header -> "subject" or "san" of the client certificate.
    #[serde(default)]
    pub forward_client_cert: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub hsts: RawHsts,
}

/// `[[listeners.tls.certificates]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM: the leaf first, then intermediates.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// SNI names served; by default the certificate's DNS names.
    pub server_names: Option<Vec<String>>,
}

/// `[listeners.tls.hsts]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    #[serde(default = "d::yes")]
    pub enabled: bool,
    #[serde(default = "d::hsts_max_age")]
    pub max_age: Duration,
    #[serde(default)]
    pub include_subdomains: bool,
    #[serde(default)]
    pub preload: bool,
}

impl Default for RawHsts {
    fn default() -> Self {
        Self {
            enabled: true,
            max_age: d::hsts_max_age(),
            include_subdomains: false,
            preload: false,
        }
    }
}

/// `[listeners.redirect_https]`: answer every request on a plain listener
/// with a redirect to https.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// 308 (keeps the method and body) or 301.
    #[serde(default = "d::redirect_status")]
    pub status: u16,
    /// The https port named in `Location` (left out when 443).
    #[serde(default = "d::https_port")]
    pub port: u16,
    /// Host names redirected besides route hosts and certificate names.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// A cluster's `tls`: `true` (verify against the system roots, SNI from
/// the endpoint's host name) or a table.
#[derive(Debug, Default)]
pub struct RawUpstreamTls {
    pub enabled: bool,
    pub table: RawUpstreamTlsTable,
}

/// `[clusters.tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTlsTable {
    /// SNI and the name the certificate must carry; by default each
    /// endpoint's host name (or IP address).
    pub server_name: Option<String>,
    /// Trusted CAs (PEM bundle); the system's when absent.
    pub ca_file: Option<String>,
    /// A client certificate the gateway presents (mTLS to the upstream).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// "1.2" (TLS 1.3 and 1.2) or "1.3".
    #[serde(default = "d::tls_min_version")]
    pub min_version: String,
    /// Accept any certificate for any name. Never in production.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl<'de> Deserialize<'de> for RawUpstreamTls {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUpstreamTls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a table")
            }
            fn visit_bool<E>(self, enabled: bool) -> Result<Self::Value, E> {
                Ok(RawUpstreamTls {
                    enabled,
                    table: RawUpstreamTlsTable {
                        min_version: d::tls_min_version(),
                        ..RawUpstreamTlsTable::default()
                    },
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table = RawUpstreamTlsTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawUpstreamTls {
                    enabled: true,
                    table,
                })
            }
        }
        de.deserialize_any(Visitor)
    }
}

//! Validation of a listener's `tls` table. Certificates and keys are read
//! here, at load: a reload with a bad one is refused and the old one keeps
//! serving.

use std::path::{Path, PathBuf};

use rustls::pki_types::ServerName;

use super::{is_token, Checker};
use crate::config::diagnostic::KeyPath;
use crate::config::raw_tls::{RawRedirect, RawTls, RawUpstreamTlsTable};
use crate::config::ListenerConfig;
use crate::routing::redirect::HttpsRedirect;
use crate::routing::{HostMatch, Route};
use crate::tls::client::{client_config, system_roots, Trust, UpstreamTls};
use crate::tls::{
    load_cert, load_roots, server_config, CertField, ClientAuth, SniResolver, TlsListener,
    UnknownSni,
};

pub(super) fn listener(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawTls,
    dir: &Path,
    watched: &mut Vec<PathBuf>,
) -> Option<TlsListener> {
    let now = unix_now();
    let unknown_sni = match raw.unknown_sni.as_str() {
        "default" => UnknownSni::Default,
        "reject" => UnknownSni::Reject,
        other => {
            c.error(
                &p.key("unknown_sni"),
                format!("{other:?} is not \"default\" or \"reject\""),
            );
            UnknownSni::Default
        }
    };
    let tls13_only = tls13_only(c, p, &raw.min_version);
    if raw.handshake_timeout.0.is_zero() {
        c.error(&p.key("handshake_timeout"), "must be greater than zero");
    }
    let client_auth = match raw.client_auth.as_str() {
        "none" => ClientAuth::None,
        "optional" => ClientAuth::Optional,
        "required" => ClientAuth::Required,
        other => {
            c.error(
                &p.key("client_auth"),
                format!("{other:?} is not \"none\", \"optional\" or \"required\""),
            );
            ClientAuth::None
        }
    };
    let roots = match (&raw.client_ca_file, client_auth) {
        (None, ClientAuth::None) => None,
        (None, _) => {
            c.error(
                &p.key("client_ca_file"),
                "client_auth needs the CA bundle client certificates are checked against",
            );
            None
        }
        (Some(_), ClientAuth::None) => {
            c.error(
                &p.key("client_ca_file"),
                "set client_auth = \"optional\" or \"required\" to use it",
            );
            None
        }
        (Some(f), _) => {
            let path = dir.join(f);
            watched.push(path.clone());
            load_roots(&path)
                .map_err(|e| c.error(&p.key("client_ca_file"), e))
                .ok()
        }
    };
    let mut forward = Vec::new();
    for (header, field) in &raw.forward_client_cert {
        let fp = p.key("forward_client_cert").key(header);
        if !is_token(header) {
            c.error(&fp, "not a header name");
            continue;
        }
        let field = match field.as_str() {
            "subject" => CertField::Subject,
            "san" => CertField::San,
            other => {
                c.error(&fp, format!("{other:?} is not \"subject\" or \"san\""));
                continue;
            }
        };
        forward.push((header.to_ascii_lowercase().into_bytes().into(), field));
    }
    if !forward.is_empty() && client_auth == ClientAuth::None {
        c.error(
            &p.key("forward_client_cert"),
            "needs client_auth = \"optional\" or \"required\"",
        );
    }

    let mut resolver = SniResolver::default();
    let mut certificates = Vec::new();
    let mut default = None;
    if raw.certificates.is_empty() {
        c.error(&p.key("certificates"), "name at least one certificate");
    }
    for (i, rc) in raw.certificates.iter().enumerate() {
        let cp = p.key("certificates").index(i);
        let (cert, key) = (dir.join(&rc.cert_file), dir.join(&rc.key_file));
        watched.push(cert.clone());
        watched.push(key.clone());
        let loaded = match load_cert(&cert, &key, &rc.cert_file, now) {
            Ok(l) => l,
            Err(e) => {
                c.error(&cp.key("cert_file"), e);
                continue;
            }
        };
        let names: Vec<String> = match &rc.server_names {
            Some(list) => list.iter().map(|n| n.to_ascii_lowercase()).collect(),
            None => loaded.info.names.clone(),
        };
        for n in names.iter().filter(|n| !is_host_pattern(n)) {
            c.error(
                &cp.key("server_names"),
                format!("{n:?} is not a host name or *.suffix"),
            );
        }
        resolver.add(&names, &loaded.key);
        if default.is_none() {
            default = Some(loaded.key.clone());
        }
        certificates.push(crate::tls::CertInfo {
            names,
            ..loaded.info
        });
    }
    if unknown_sni == UnknownSni::Default {
        resolver.set_default(default);
    }
    let hsts = &raw.hsts;
    if hsts.preload && (!hsts.include_subdomains || hsts.max_age.0.as_secs() < 31_536_000) {
        c.error(
            &p.key("hsts").key("preload"),
            "preload needs include_subdomains = true and max_age of at least 365d",
        );
    }
    let mut hsts_line = Vec::new();
    if hsts.enabled {
        hsts_line.extend_from_slice(
            format!(
                "strict-transport-security: max-age={}",
                hsts.max_age.0.as_secs()
            )
            .as_bytes(),
        );
        if hsts.include_subdomains {
            hsts_line.extend_from_slice(b"; includeSubDomains");
        }
        if hsts.preload {
            hsts_line.extend_from_slice(b"; preload");
        }
        hsts_line.extend_from_slice(b"\r\n");
    }
    let server = match server_config(resolver, tls13_only, client_auth, roots) {
        Ok(s) => s,
        Err(e) => {
            c.error(p, e);
            return None;
        }
    };
    Some(TlsListener {
        server: std::sync::Arc::new(server),
        handshake_timeout: raw.handshake_timeout.0,
        hsts: hsts_line.into(),
        forward: forward.into(),
        certificates,
    })
}

/// Seconds since the epoch, for certificate expiry.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `min_version`: "1.2" (TLS 1.3 and 1.2) or "1.3"; true for 1.3 only.
fn tls13_only(c: &mut Checker<'_>, p: &KeyPath, min_version: &str) -> bool {
    match min_version {
        "1.2" => false,
        "1.3" => true,
        other => {
            c.error(
                &p.key("min_version"),
                format!("{other:?} is not \"1.2\" or \"1.3\" (older versions are not offered)"),
            );
            false
        }
    }
}

/// A host name or `*.suffix` (lowercase expected by callers).
fn is_host_pattern(n: &str) -> bool {
    let bare = n.strip_prefix("*.").unwrap_or(n);
    !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A plain listener's redirect to https, for the hosts the config knows:
/// route hosts, the certificate names of TLS listeners, and `hosts`.
pub(super) fn redirect(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawRedirect,
    routes: &[Route],
    listeners: &[ListenerConfig],
) -> Option<HttpsRedirect> {
    if !matches!(raw.status, 301 | 308) {
        c.error(
            &p.key("status"),
            format!("{} is not 308 or 301", raw.status),
        );
    }
    if raw.port == 0 {
        c.error(&p.key("port"), "must be a port number (1-65535)");
    }
    let mut names: Vec<String> = Vec::new();
    for (i, h) in raw.hosts.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !is_host_pattern(&h) {
            c.error(
                &p.key("hosts").index(i),
                format!("{h:?} is not a host name or *.suffix"),
            );
        }
        names.push(h);
    }
    for r in routes {
        match &r.host {
            HostMatch::Any => {}
            HostMatch::Exact(h) => names.push(String::from_utf8_lossy(h).into_owned()),
            HostMatch::Suffix(s) => names.push(format!("*{}", String::from_utf8_lossy(s))),
        }
    }
    for t in listeners.iter().filter_map(|l| l.tls.as_ref()) {
        for cert in &t.certificates {
            names.extend(cert.names.iter().cloned());
        }
    }
    let redirect = HttpsRedirect::new(raw.status, raw.port, names.iter().map(String::as_str));
    if redirect.is_empty() {
        c.error(
            &p.key("hosts"),
            "no host name to redirect: list them here, or give routes a host, or serve TLS certificates",
        );
        return None;
    }
    Some(redirect)
}

/// A cluster's TLS to its endpoints. Files are read here, so a bad one
/// refuses the config (or the reload) like a listener's.
pub(super) fn upstream(
    c: &mut Checker<'_>,
    p: &KeyPath,
    raw: &RawUpstreamTlsTable,
    dir: &Path,
    watched: &mut Vec<PathBuf>,
) -> Option<UpstreamTls> {
    let now = unix_now();
    let tls13_only = tls13_only(c, p, &raw.min_version);
    let server_name = raw.server_name.as_ref().and_then(|n| {
        ServerName::try_from(n.to_ascii_lowercase())
            .map_err(|_| {
                c.error(
                    &p.key("server_name"),
                    format!("{n:?} is not a DNS name or IP address"),
                )
            })
            .ok()
    });
    let trust = match (&raw.ca_file, raw.insecure_skip_verify) {
        (Some(_), true) => {
            c.error(
                &p.key("insecure_skip_verify"),
                "verification is off, so ca_file would never be used; remove one of them",
            );
            return None;
        }
        (None, true) => Trust::Anyone,
        (Some(f), false) => {
            let path = dir.join(f);
            watched.push(path.clone());
            match load_roots(&path) {
                Ok(r) => Trust::Roots(r),
                Err(e) => {
                    c.error(&p.key("ca_file"), e);
                    return None;
                }
            }
        }
        (None, false) => match system_roots() {
            Ok(r) => Trust::Roots(r),
            Err(e) => {
                c.error(&p.key("ca_file"), e);
                return None;
            }
        },
    };
    let identity = match (&raw.cert_file, &raw.key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let (cp, kp) = (dir.join(cert), dir.join(key));
            watched.push(cp.clone());
            watched.push(kp.clone());
            match load_cert(&cp, &kp, cert, now) {
                Ok(l) => Some(l.key),
                Err(e) => {
                    c.error(&p.key("cert_file"), e);
                    return None;
                }
            }
        }
        (Some(_), None) => {
            c.error(&p.key("key_file"), "cert_file needs its key_file");
            return None;
        }
        (None, Some(_)) => {
            c.error(&p.key("cert_file"), "key_file needs its cert_file");
            return None;
        }
    };
    match client_config(trust, identity, tls13_only) {
        Ok(config) => Some(UpstreamTls {
            client: std::sync::Arc::new(config),
            server_name,
            insecure: raw.insecure_skip_verify,
        }),
        Err(e) => {
            c.error(p, e);
            None
        }
    }
}

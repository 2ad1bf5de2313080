//! The webhook's serving certificate.
//!
//! **Self-managed** (default): a CA and a serving certificate signed by it live in one
//! Secret (`ca.crt`, `tls.crt`, `tls.key`, and `ca-previous.crt` after a rotation). Any
//! replica creates it when missing and replaces both before a third of their lifetime is
//! left, conditioned on the Secret's resourceVersion so only one replica rotates; every
//! replica reloads what the Secret holds without a restart. The caBundle carries the current
//! and the previous CA, so a replica still serving the old certificate stays trusted during a
//! rotation. The CA's private key is not kept: a rotation makes a new CA.
//!
//! **Mounted files** (cert-manager): `tls.crt`, `tls.key` and optionally `ca.crt` in a
//! directory, reloaded when they change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Annotation on the Secret: when its certificates expire (RFC 3339).
pub const NOT_AFTER: &str = "fallback.kong-dp.io/not-after";

/// What the server presents and the apiserver trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    /// The caBundle: PEM of every CA to trust (may be empty with cert-manager's injector).
    pub ca_bundle: String,
    pub not_after: Option<SystemTime>,
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A Secret the operator manages: namespace, name, the names the certificate is for,
    /// and its lifetime.
    Managed {
        namespace: String,
        name: String,
        hosts: Vec<String>,
        validity: Duration,
    },
    /// Files written by cert-manager (or anything else).
    Files { dir: PathBuf },
}

/// A new CA and a serving certificate for `hosts` (DNS names or IP addresses). Pure but for
/// the randomness of the keys.
pub fn generate(
    hosts: &[String],
    validity: Duration,
    now: SystemTime,
) -> Result<(String, String, String), rcgen::Error> {
    let not_before = time::OffsetDateTime::from(now - Duration::from_secs(300));
    let not_after = time::OffsetDateTime::from(now + validity);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kong-fallback-operator webhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let (ips, names): (Vec<&String>, Vec<&String>) =
        hosts.iter().partition(|h| h.parse::<IpAddr>().is_ok());
    let mut leaf = CertificateParams::new(names.into_iter().cloned().collect::<Vec<_>>())?;
    for ip in ips {
        if let Ok(ip) = ip.parse() {
            leaf.subject_alt_names.push(SanType::IpAddress(ip));
        }
    }
    leaf.distinguished_name
        .push(DnType::CommonName, "kong-fallback-operator webhook");
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Whether material valid until `not_after` for `validity` should be replaced at `now`:
/// less than a third of its lifetime left.
pub fn renew_due(not_after: Option<SystemTime>, validity: Duration, now: SystemTime) -> bool {
    not_after.is_none_or(|t| t.duration_since(now).unwrap_or_default() < validity / 3)
}

fn text(s: &Secret, key: &str) -> Option<String> {
    String::from_utf8(s.data.as_ref()?.get(key)?.0.clone()).ok()
}

fn material_of(s: &Secret) -> Option<Material> {
    let not_after = s
        .annotations()
        .get(NOT_AFTER)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from);
    let mut ca_bundle = text(s, "ca.crt")?;
    if let Some(prev) = text(s, "ca-previous.crt") {
        ca_bundle.push_str(&prev);
    }
    Some(Material {
        cert_pem: text(s, "tls.crt")?,
        key_pem: text(s, "tls.key")?,
        ca_bundle,
        not_after,
    })
}

/// The managed Secret's material, creating or rotating it first if needed. `rotate`
/// forces a rotation.
pub async fn ensure_secret(
    api: &Api<Secret>,
    name: &str,
    hosts: &[String],
    validity: Duration,
    rotate: bool,
) -> Result<Material, String> {
    for _ in 0..3 {
        let current = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read Secret {name}: {e}"))?;
        let now = SystemTime::now();
        let existing = current.as_ref().and_then(material_of);
        if let Some(m) = &existing
            && !rotate
            && !renew_due(m.not_after, validity, now)
        {
            return Ok(m.clone());
        }
        let (ca, cert, key) = generate(hosts, validity, now)
            .map_err(|e| format!("cannot generate the webhook certificate: {e}"))?;
        let mut data = BTreeMap::from([
            ("ca.crt".to_owned(), ByteString(ca.into_bytes())),
            ("tls.crt".to_owned(), ByteString(cert.into_bytes())),
            ("tls.key".to_owned(), ByteString(key.into_bytes())),
        ]);
        if let Some(prev) = current.as_ref().and_then(|s| text(s, "ca.crt")) {
            data.insert("ca-previous.crt".to_owned(), ByteString(prev.into_bytes()));
        }
        let not_after = jiff::Timestamp::try_from(now + validity)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: current.as_ref().and_then(|s| s.resource_version()),
                annotations: Some(BTreeMap::from([(NOT_AFTER.to_owned(), not_after)])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "kong-fallback-operator".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        };
        let pp = PostParams {
            field_manager: Some(crate::api::FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = match current {
            None => api.create(&pp, &secret).await,
            // NB: conditioned on the resourceVersion read: one replica rotates, the others
            // get a conflict and read what it wrote.
            Some(_) => api.replace(name, &pp, &secret).await,
        };
        match written {
            Ok(s) => {
                tracing::info!(secret = %name, "wrote a new webhook CA and serving certificate");
                return material_of(&s)
                    .ok_or_else(|| "the written Secret is incomplete".to_owned());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(format!("cannot write Secret {name}: {e}")),
        }
    }
    Err(format!("Secret {name} kept changing under us"))
}

/// When the first certificate of `cert_pem` (the serving certificate) expires: read from
/// the certificate itself, so it holds for mounted files as well as the managed Secret.
pub fn not_after_of(cert_pem: &str) -> Option<SystemTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// The material in a cert-manager style directory.
pub fn read_files(dir: &std::path::Path) -> Result<Material, String> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map_err(|e| format!("cannot read {}: {e}", dir.join(f).display()))
    };
    Ok(Material {
        cert_pem: read("tls.crt")?,
        key_pem: read("tls.key")?,
        ca_bundle: read("ca.crt").unwrap_or_default(),
        not_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let v = Duration::from_secs(90 * 86_400);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert!(!renew_due(
            Some(now + Duration::from_secs(31 * 86_400)),
            v,
            now
        ));
        assert!(renew_due(
            Some(now + Duration::from_secs(29 * 86_400)),
            v,
            now
        ));
        assert!(
            renew_due(Some(now - Duration::from_secs(1)), v, now),
            "expired"
        );
        assert!(renew_due(None, v, now), "unknown expiry");
    }

    #[test]
    fn the_expiry_is_read_from_the_serving_certificate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let validity = Duration::from_secs(90 * 86_400);
        let (_, cert, _) = generate(&["svc.ns.svc".to_owned()], validity, now).unwrap();
        assert_eq!(not_after_of(&cert), Some(now + validity));
        assert_eq!(not_after_of("not a certificate"), None);
    }

    #[test]
    fn a_generated_certificate_is_for_the_hosts_and_signed_by_the_ca() {
        let (ca, cert, key) = generate(
            &["webhook.kong.svc".into(), "127.0.0.1".into()],
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        // rustls accepts the pair, and a client trusting the CA verifies it for both names.
        let certs: Vec<_> = rustls_pemfile_certs(&cert);
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&ca) {
            roots.add(c).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        for host in ["webhook.kong.svc", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
            verifier
                .verify_server_cert(
                    &certs[0],
                    &[],
                    &name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }

    #[test]
    fn mounted_files_are_read_and_a_change_is_seen() {
        let dir = std::env::temp_dir().join(format!("kfo-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_files(&dir).unwrap_err().contains("tls.crt"));
        let (ca, cert, key) = generate(
            &["svc.ns.svc".into()],
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .unwrap();
        for (f, v) in [("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)] {
            std::fs::write(dir.join(f), v).unwrap();
        }
        let first = read_files(&dir).unwrap();
        assert_eq!(
            (first.cert_pem.as_str(), first.ca_bundle.as_str()),
            (cert.as_str(), ca.as_str())
        );
        // cert-manager renews: the next check sees different material and reloads it.
        let (_, renewed, key) = generate(
            &["svc.ns.svc".into()],
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .unwrap();
        std::fs::write(dir.join("tls.crt"), &renewed).unwrap();
        std::fs::write(dir.join("tls.key"), &key).unwrap();
        assert_ne!(read_files(&dir).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use rustls::client::danger::ServerCertVerifier;

    fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

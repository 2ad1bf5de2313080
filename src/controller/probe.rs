//! `StorageReachable`: can a data plane read the store with the credentials it is given?
//! Every reconcile reads the read-credentials Secret (a missing Secret or key shows at
//! once); every `spec.storage.validationInterval` (and whenever the storage settings or the
//! Secret change) the operator reads, with those credentials, what an importer would read:
//! `config.json` of the first version in `exporter.versions` (else of the last export in
//! status), or lists the prefix when no version is known. An absent object is fine: the
//! store answered.
//!
//! With `readCredentials.ambient` there is nothing the operator can check: the data planes
//! read with their own cloud identity, not the operator's, so the condition is `Unknown`
//! (`NotVerifiable`) and `doctor`, run as the data planes' ServiceAccount, is the check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::plan::{PolicyKey, fingerprint, read_access};
use super::secrets::SecretReader;
use crate::api::FallbackConfigPolicy;
use crate::kong::{Provider, StorageUrl};
use crate::storage;

/// (ok, reason, message) for the condition; `ok` is `None` when the operator cannot make
/// the check (the condition is then `Unknown`).
pub type Outcome = (Option<bool>, String, String);

/// A check that was made: (ok, reason, message).
type Checked = (bool, String, String);

fn known((ok, reason, message): Checked) -> Outcome {
    (Some(ok), reason, message)
}

/// The last probe of every policy.
#[derive(Default)]
pub struct Probes {
    last: Mutex<HashMap<PolicyKey, (u64, Instant, Outcome)>>,
}

impl Probes {
    /// The policy's storage check, probing the store only when due.
    pub async fn check(&self, reader: &SecretReader, policy: &FallbackConfigPolicy) -> Outcome {
        let key: PolicyKey = (policy.namespace().unwrap_or_default(), policy.name_any());
        let spec = &policy.spec;
        let url = match StorageUrl::parse(&spec.storage.url) {
            Ok(u) => u,
            Err(e) => return (Some(false), "InvalidSpec".into(), e.to_string()),
        };
        if let Some(message) = gcs_ambient_before_3_6(policy, &url) {
            return (Some(false), "AmbientUnsupported".into(), message);
        }
        if let Some(outcome) = not_verifiable(policy) {
            return outcome;
        }
        let (access, secret_versions) = match read_access(reader, &key.0, spec, &url).await {
            Ok(a) => a,
            Err((reason, message)) => return (Some(false), reason, message),
        };
        let interval: Duration = spec.storage.validation_interval.into();
        if interval.is_zero() {
            drop(access);
            return known(disabled());
        }
        let inputs = serde_json::to_string(&spec.storage).unwrap_or_default();
        let fp = fingerprint(&[&inputs, &secret_versions.join(",")]);
        if let Some((f, at, outcome)) = self.lock().get(&key)
            && *f == fp
            && at.elapsed() < interval
        {
            return outcome.clone();
        }
        let version = spec.exporter.versions.first().cloned().or_else(|| {
            policy
                .status
                .as_ref()
                .and_then(|s| s.exports.first())
                .map(|e| e.version.clone())
        });
        let outcome = known(probe(&url, access, version.as_deref()).await);
        self.lock()
            .insert(key, (fp, Instant::now(), outcome.clone()));
        outcome
    }

    /// Forgets a policy that is gone.
    pub fn forget(&self, key: &PolicyKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PolicyKey, (u64, Instant, Outcome)>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Kong before 3.6 imports from GCS only with `GCP_SERVICE_ACCOUNT`: its GCS strategy
/// asserted "GCP access token is not available" without one (fixed in 3.6.0.0, FTI-5703:
/// `kong/clustering/config_sync_backup/strategies/gcs.lua` then falls back to the node's
/// own identity). With ambient read credentials, the known versions below 3.6 cannot import.
fn gcs_ambient_before_3_6(policy: &FallbackConfigPolicy, url: &StorageUrl) -> Option<String> {
    let ambient = policy.spec.storage.read_credentials.ambient == Some(true);
    if url.provider != Provider::Gcs || !ambient {
        return None;
    }
    let exported = policy
        .status
        .iter()
        .flat_map(|s| s.exports.iter().map(|e| &e.version));
    let old: std::collections::BTreeSet<&String> = policy
        .spec
        .exporter
        .versions
        .iter()
        .chain(exported)
        .filter(|v| {
            v.parse::<crate::kong::KongVersion>()
                .is_ok_and(|v| (v.major(), v.minor()) < (3, 6))
        })
        .collect();
    (!old.is_empty()).then(|| {
        format!(
            "Kong {} cannot import from GCS with ambient credentials: before 3.6 Kong requires GCP_SERVICE_ACCOUNT; set spec.storage.readCredentials.secretName, or upgrade the data planes to 3.6 or later",
            old.into_iter().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The outcome with `readCredentials.ambient`: the data planes read with their own cloud
/// identity (their ServiceAccount's IRSA role or Pod Identity association, their Workload
/// Identity binding), which is not the operator's. A probe with the operator's identity would
/// say nothing about theirs, so none is made and no credentials are injected. Pure.
fn not_verifiable(policy: &FallbackConfigPolicy) -> Option<Outcome> {
    (policy.spec.storage.read_credentials.ambient == Some(true)).then(|| {
        (
            None,
            "NotVerifiable".to_owned(),
            "spec.storage.readCredentials.ambient: the data planes read the store with their own cloud identity (IRSA, EKS Pod Identity, GKE Workload Identity), not the operator's, so the operator cannot check it; run `kong-fallback-operator doctor` as the data planes' ServiceAccount to verify (docs/doctor.md)".to_owned(),
        )
    })
}

/// The outcome with `storage.validationInterval: 0s`: the store is never probed (the Secret
/// still is read, and a missing one still shows).
fn disabled() -> Checked {
    (
        true,
        "CheckDisabled".into(),
        "spec.storage.validationInterval is 0s: the operator does not check that the data planes can read the store".into(),
    )
}

async fn probe(url: &StorageUrl, access: storage::Access, version: Option<&str>) -> Checked {
    let store = match storage::open(url, access).await {
        Ok(s) => s,
        Err(e) => return (false, "StorageUnusable".into(), e),
    };
    let bucket = &url.bucket;
    let result = match version {
        Some(v) => {
            let key = url.config_key(v);
            // NB: this message stays until the next probe, so it says when, not "not
            // exported yet" next to an Exporting condition that says otherwise. HEAD, not
            // GET: the same permission (s3:GetObject), without holding the configuration.
            store.head(&key).await.map(|o| match o {
                Some(_) => format!("the read credentials read {bucket}/{key}"),
                None => format!(
                    "the read credentials reach {bucket}; {key} did not exist yet at the last check"
                ),
            })
        }
        None => {
            let prefix = if url.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", url.prefix)
            };
            store.list(&prefix).await.map(|l| {
                format!(
                    "the read credentials list {bucket}/{prefix} ({} objects)",
                    l.len()
                )
            })
        }
    };
    match result {
        Ok(message) => (true, "Reachable".into(), message),
        Err(e) => refused(url, &e),
    }
}

/// The condition for a probe the store refused, with what the read credentials need.
fn refused(url: &StorageUrl, e: &storage::StoreError) -> Checked {
    let mut message = e.to_string();
    if e.kind == storage::ErrorKind::Credentials {
        message.push_str(match url.provider {
            // NB: without s3:ListBucket, S3 answers 403 rather than 404 for an object that
            // does not exist yet, so a missing config.json also lands here.
            Provider::S3 => {
                "; a data plane's read credentials need s3:GetObject on the prefix and \
                 s3:ListBucket on the bucket (without ListBucket, S3 answers a missing \
                 object with 403)"
            }
            Provider::Gcs => {
                "; a data plane's read credentials need storage.objects.get and \
                 storage.objects.list on the bucket (roles/storage.objectViewer)"
            }
        });
    }
    (false, e.kind.label().to_owned(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: storage::ErrorKind) -> storage::StoreError {
        storage::StoreError {
            kind,
            op: "get",
            bucket: "bkt".into(),
            key: "p/3.6.1.4/config.json".into(),
            detail: "AccessDenied".into(),
        }
    }

    #[test]
    fn a_refusal_says_which_permissions_the_read_credentials_need() {
        let s3 = StorageUrl::parse("s3://bkt/p").unwrap();
        let (ok, reason, message) = refused(&s3, &error(storage::ErrorKind::Credentials));
        assert!(!ok);
        assert_eq!(reason, "Credentials");
        assert!(
            message.starts_with("get bkt/p/3.6.1.4/config.json: "),
            "{message}"
        );
        assert!(message.contains("s3:GetObject") && message.contains("s3:ListBucket"));

        let gcs = StorageUrl::parse("gcs://bkt/p").unwrap();
        let (_, _, message) = refused(&gcs, &error(storage::ErrorKind::Credentials));
        assert!(message.contains("roles/storage.objectViewer"), "{message}");
    }

    #[test]
    fn gcs_ambient_importers_before_3_6_are_reported_by_version() {
        let policy = |url: &str, versions: &[&str]| -> FallbackConfigPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
                "metadata": {"name": "p", "namespace": "kong"},
                "spec": {
                    "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                    "storage": {"url": url, "region": "r", "readCredentials": {"ambient": true}},
                    "exporter": {"mode": "None", "versions": versions}
                }
            }))
            .unwrap()
        };
        let check = |p: &FallbackConfigPolicy| {
            gcs_ambient_before_3_6(p, &StorageUrl::parse(&p.spec.storage.url).unwrap())
        };
        let p = policy("gcs://bkt/kong", &["3.5.0.3", "3.6.1.4", "3.4.2"]);
        let m = check(&p).unwrap();
        assert!(m.starts_with("Kong 3.4.2, 3.5.0.3 cannot import"), "{m}");
        assert!(m.contains("GCP_SERVICE_ACCOUNT"), "{m}");
        assert_eq!(check(&policy("gcs://bkt/kong", &["3.6.0.0"])), None);
        assert_eq!(check(&policy("s3://bkt/kong", &["3.5.0.3"])), None);
    }

    #[test]
    fn ambient_read_credentials_are_not_verifiable_by_the_operator() {
        let policy = |read: serde_json::Value| -> FallbackConfigPolicy {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
                "metadata": {"name": "p", "namespace": "kong"},
                "spec": {
                    "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                    "storage": {"url": "s3://bkt/kong", "region": "r", "readCredentials": read},
                    "exporter": {"mode": "None"}
                }
            }))
            .unwrap()
        };
        let (ok, reason, message) =
            not_verifiable(&policy(serde_json::json!({"ambient": true}))).unwrap();
        assert_eq!(ok, None);
        assert_eq!(reason, "NotVerifiable");
        assert!(message.contains("doctor"), "{message}");
        assert_eq!(
            not_verifiable(&policy(serde_json::json!({"secretName": "r"}))),
            None
        );
    }

    #[test]
    fn other_failures_carry_no_permission_hint() {
        let s3 = StorageUrl::parse("s3://bkt/p").unwrap();
        let (ok, reason, message) = refused(&s3, &error(storage::ErrorKind::Network));
        assert!(!ok);
        assert_eq!(reason, "Network");
        assert!(!message.contains("s3:GetObject"), "{message}");
    }
}

//! What a pod gets from the policies of its namespace: a pure function from (pod, policies)
//! to a JSON patch, for the webhook and for the controller's drift check.
//!
//! - **Who claims a pod.** A valid policy claims the pods its `dataPlanes.selector` matches
//!   (importers) or its `backup.selector` matches (backup pods). A pod matching both
//!   selectors of one policy is a conflict and gets nothing (importer or exporter is not
//!   ours to guess). A pod claimed by several policies goes to the oldest policy (then by
//!   name), and the others are reported.
//! - **What it gets.** Env in one container (the policy's `container`, else `proxy`, the
//!   name Kong's Helm chart uses, else the only container): importers
//!   `KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on` and the **read** credentials; backup pods
//!   `KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on`, the **write** credentials, a stable
//!   `KONG_NODE_ID` (the pod UID, through the downward API) for the election mirror, and the
//!   S3 put options. Both get the storage URL and, for S3, the region and endpoint.
//!   Credentials are always `secretKeyRef`s to the referenced Secret, never values, and
//!   always `optional: true`: Kong reads them only when its first control-plane connection
//!   fails, so a missing Secret or key must never stop a Kong pod from starting (a required
//!   reference leaves it in `CreateContainerConfigError`). A reference to a Secret or key the
//!   controller knows is missing ([`SecretFacts`]) is left out and said in a warning.
//! - **The user wins.** A variable the container already sets is left as it is and reported.
//!   `envFrom` is not inspected: an `env` entry overrides it, as Kubernetes defines.
//! - **Idempotent.** The annotation [`ANNOTATION`] records policy, generation, role and a
//!   hash of what was injected; a pod whose env already holds everything gets no patch, so a
//!   reinvocation changes nothing, and a hash that differs from the policy's current one is
//!   drift the controller reports.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, SecretKeySelector,
};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{Credentials, FallbackConfigPolicy, ServerSideEncryption};
use crate::kong::env;

/// The pod annotation recording what was injected (JSON of [`Injected`]).
pub const ANNOTATION: &str = "fallback.kong-dp.io/injected";

/// Importer or backup pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Importer,
    Backup,
}

/// The content of [`ANNOTATION`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injected {
    pub policy: String,
    pub generation: i64,
    pub role: Role,
    /// Hash of the injected env: differs from [`env_hash`] of the current policy on drift.
    pub hash: String,
    /// Kong settings of the container that come from a vault reference: a data plane that
    /// cannot resolve them at start never reaches the fallback (see [`vault_settings`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vault: Vec<String>,
}

/// What the controller last read of the Secrets that policies name: each one's keys, or
/// `None` when it does not exist. A Secret it has not read is unknown, and referenced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretFacts(BTreeMap<(String, String), Option<BTreeSet<String>>>);

impl SecretFacts {
    /// Records what a read of Secret `namespace/name` found.
    pub fn record(&mut self, namespace: &str, name: &str, keys: Option<BTreeSet<String>>) {
        self.0.insert((namespace.to_owned(), name.to_owned()), keys);
    }

    /// Why `key` of Secret `namespace/name` cannot be referenced, if it is known to be missing.
    pub fn missing(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        match self.0.get(&(namespace.to_owned(), name.to_owned()))? {
            None => Some(format!("Secret {namespace}/{name} does not exist")),
            Some(keys) if !keys.contains(key) => {
                Some(format!("Secret {namespace}/{name} has no key {key}"))
            }
            Some(_) => None,
        }
    }
}

/// Why a pod got nothing, or what the user should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remark {
    /// The pod matches both selectors of `policy`.
    BothRoles { policy: String },
    /// Other policies also claim the pod; `winner` injects.
    Overlap { winner: String, others: Vec<String> },
    /// No container to inject into.
    NoContainer { policy: String, wanted: String },
    /// The container sets these variables itself; its values were kept.
    UserOverride { names: Vec<String> },
    /// Credentials left out because their Secret or key is missing.
    SecretMissing {
        names: Vec<String>,
        why: Vec<String>,
    },
    /// Settings the data plane needs to start come from a vault reference.
    VaultReference { names: Vec<String> },
}

impl std::fmt::Display for Remark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remark::BothRoles { policy } => write!(
                f,
                "matches both dataPlanes.selector and backup.selector of {policy}: nothing injected; make the selectors disjoint"
            ),
            Remark::Overlap { winner, others } => write!(
                f,
                "claimed by several policies ({winner}, {}): the oldest, {winner}, injects; make the selectors disjoint",
                others.join(", ")
            ),
            Remark::NoContainer { policy, wanted } => write!(
                f,
                "{policy}: {wanted}; set spec.dataPlanes.container (or spec.backup.container)"
            ),
            Remark::UserOverride { names } => write!(
                f,
                "the container sets {} itself; its values were kept",
                names.join(", ")
            ),
            Remark::VaultReference { names } => write!(
                f,
                "{} come(s) from a vault reference: if it cannot be resolved while the control plane is down, the data plane fails to start and never imports the fallback configuration; take these settings from a Secret",
                names.join(", ")
            ),
            Remark::SecretMissing { names, why } => write!(
                f,
                "{} not injected: {}; this pod cannot import the fallback configuration until it is recreated after the Secret is fixed",
                names.join(", "),
                why.join("; ")
            ),
        }
    }
}

/// The outcome for one pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// JSON patch operations (RFC 6902); empty when nothing is to change.
    pub patch: Vec<Value>,
    /// What the pod is (or would be) injected as.
    pub injected: Option<Injected>,
    pub remarks: Vec<Remark>,
}

fn key(p: &FallbackConfigPolicy) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    // NB: an empty selector would claim every pod; validation refuses it, and so do we.
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    // NB: the requirements are ANDed, so a matchLabels pair the pod lacks settles it
    // without building the Selector (a clone and a conversion). The controller's pod report
    // asks this for every pod in a namespace and every policy there: built each time, it
    // was the largest share of an operator's CPU while catching up on 200 policies and
    // 5,000 pods (bench P4).
    let lacks_a_pair = selector
        .match_labels
        .iter()
        .flatten()
        .any(|(k, v)| labels.get(k) != Some(v));
    !empty && !lacks_a_pair && Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// The role `policy` gives a pod with `labels`, if any; `Err` when both selectors match.
pub fn role(
    policy: &FallbackConfigPolicy,
    labels: &BTreeMap<String, String>,
) -> Result<Option<Role>, Remark> {
    let importer = selects(&policy.spec.data_planes.selector, labels);
    let backup = policy
        .spec
        .backup
        .as_ref()
        .is_some_and(|b| selects(&b.selector, labels));
    match (importer, backup) {
        (true, true) => Err(Remark::BothRoles {
            policy: key(policy),
        }),
        (true, false) => Ok(Some(Role::Importer)),
        (false, true) => Ok(Some(Role::Backup)),
        (false, false) => Ok(None),
    }
}

/// Kong's env var `name` from `key` of Secret `secret`.
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                // NB: never required: a missing Secret or key would keep the pod from
                // starting, and Kong needs these only if the control plane is down.
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

/// The env `policy` gives a pod in `role`, in a fixed order, without the credentials that
/// `secrets` knows to be missing.
pub fn desired_env(
    policy: &FallbackConfigPolicy,
    role: Role,
    secrets: &SecretFacts,
) -> Vec<EnvVar> {
    desired(policy, role, secrets).0
}

/// [`desired_env`] and the credentials left out, with why.
fn desired(
    policy: &FallbackConfigPolicy,
    role: Role,
    secrets: &SecretFacts,
) -> (Vec<EnvVar>, Vec<(String, String)>) {
    let ns = policy.namespace().unwrap_or_default();
    let mut left_out = Vec::new();
    let st = &policy.spec.storage;
    let s3 = st.url.starts_with("s3://");
    let mut out = vec![match role {
        Role::Importer => value_env(env::FALLBACK_IMPORT, "on"),
        Role::Backup => value_env(env::FALLBACK_EXPORT, "on"),
    }];
    out.push(value_env(env::FALLBACK_STORAGE, &st.url));
    if s3 {
        if let Some(region) = &st.region {
            out.push(value_env(env::AWS_REGION, region));
            out.push(value_env(env::AWS_DEFAULT_REGION, region));
        }
        if let Some(endpoint) = &st.endpoint {
            out.push(value_env(env::AWS_CONFIG_STORAGE_ENDPOINT, endpoint));
        }
    }
    let creds: Option<&Credentials> = match role {
        Role::Importer => Some(&st.read_credentials),
        Role::Backup => st.write_credentials.as_ref(),
    };
    if let Some(c) = creds
        && let Some(secret) = c.secret()
    {
        let required: &[&str] = if s3 {
            &[env::AWS_ACCESS_KEY_ID, env::AWS_SECRET_ACCESS_KEY]
        } else {
            &[env::GCP_SERVICE_ACCOUNT]
        };
        for name in required {
            match secrets.missing(&ns, secret, c.key(name)) {
                Some(why) => left_out.push(((*name).to_owned(), why)),
                None => out.push(secret_env(name, secret, c.key(name))),
            }
        }
        // NB: the session token is optional in the Secret too: always referenced, so the
        // env (and its hash) does not change when a Secret without one is read.
        if s3 {
            let token = env::AWS_SESSION_TOKEN;
            out.push(secret_env(token, secret, c.key(token)));
        }
    }
    if role == Role::Backup {
        out.push(EnvVar {
            name: env::NODE_ID.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.uid".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
        if let Some(p) = st.put_options.as_ref().filter(|_| s3) {
            let mut args = serde_json::Map::new();
            if let Some(sse) = p.server_side_encryption {
                let v = match sse {
                    ServerSideEncryption::Aes256 => "AES256",
                    ServerSideEncryption::AwsKms => "aws:kms",
                };
                args.insert("ServerSideEncryption".into(), json!(v));
            }
            if let Some(k) = &p.kms_key_id {
                args.insert("SSEKMSKeyId".into(), json!(k));
            }
            if let Some(c) = &p.storage_class {
                args.insert("StorageClass".into(), json!(c));
            }
            if !args.is_empty() {
                out.push(value_env(
                    env::FALLBACK_EXPORT_S3_CONFIG,
                    &Value::Object(args).to_string(),
                ));
            }
        }
    }
    (out, left_out)
}

/// A short stable hash of an env list.
pub fn env_hash(env: &[EnvVar]) -> String {
    use md5::{Digest, Md5};
    let text = serde_json::to_string(env).unwrap_or_default();
    Md5::digest(text.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn container_index(pod: &Pod, wanted: Option<&str>) -> Result<usize, String> {
    let containers: &[Container] = pod.spec.as_ref().map_or(&[], |s| &s.containers);
    match wanted {
        Some(name) => containers
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| format!("the pod has no container named {name}")),
        None => containers
            .iter()
            .position(|c| c.name == "proxy")
            .or(if containers.len() == 1 { Some(0) } else { None })
            .ok_or_else(|| {
                format!(
                    "the pod has {} containers and none is named proxy",
                    containers.len()
                )
            }),
    }
}

/// Kong settings a data plane must resolve before it can start, connect or fall back.
const START_SETTINGS: [&str; 4] = [
    "KONG_CLUSTER_CERT",
    "KONG_CLUSTER_CERT_KEY",
    "KONG_CLUSTER_CA_CERT",
    "KONG_LUA_SSL_TRUSTED_CERTIFICATE",
];

/// The settings of `container` in [`START_SETTINGS`] taken from a vault reference
/// (`{vault://...}`) other than the `env` vault, which needs nothing but the pod's own env.
/// Kong resolves such references at start; one that cannot be resolved while the control
/// plane is down stops the node before it ever reads the fallback configuration.
pub fn vault_settings(container: &Container) -> Vec<String> {
    container
        .env
        .iter()
        .flatten()
        .filter(|e| START_SETTINGS.contains(&e.name.as_str()))
        .filter(|e| {
            e.value.as_deref().is_some_and(|v| {
                let v = v.trim();
                v.starts_with("{vault://") && !v.starts_with("{vault://env/")
            })
        })
        .map(|e| e.name.clone())
        .collect()
}

/// The policy that claims `pod` among `policies` (any namespace; only the pod's counts),
/// with its role, and remarks about conflicts.
pub fn claim<'a, P: std::borrow::Borrow<FallbackConfigPolicy>>(
    pod: &Pod,
    policies: &'a [P],
) -> (Option<(&'a FallbackConfigPolicy, Role)>, Vec<Remark>) {
    claim_by_labels(
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.labels(),
        policies,
    )
}

/// [`claim`] for a pod in namespace `ns` with `labels`.
pub fn claim_by_labels<'a, P: std::borrow::Borrow<FallbackConfigPolicy>>(
    ns: &str,
    labels: &BTreeMap<String, String>,
    policies: &'a [P],
) -> (Option<(&'a FallbackConfigPolicy, Role)>, Vec<Remark>) {
    let mut remarks = Vec::new();
    let mut claims: Vec<(&FallbackConfigPolicy, Role)> = Vec::new();
    for p in policies.iter().map(|p| p.borrow()).filter(|p| {
        p.metadata.namespace.as_deref().unwrap_or_default() == ns
            && p.metadata.deletion_timestamp.is_none()
    }) {
        let selected = role(p, labels);
        // NB: an invalid policy injects nothing: its status says why. Validated only when
        // it selects the pod: the controller's pod report calls this for each of a
        // policy's pods, and validating every policy each time made that pods x policies.
        if matches!(selected, Ok(None)) || !crate::api::validate(&p.spec).is_empty() {
            continue;
        }
        match selected {
            Ok(Some(r)) => claims.push((p, r)),
            Ok(None) => {}
            Err(remark) => remarks.push(remark),
        }
    }
    // Oldest first, then by name: the same winner on every replica and every call.
    claims.sort_by_key(|(p, _)| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.name_any(),
        )
    });
    if claims.len() > 1 {
        remarks.push(Remark::Overlap {
            winner: key(claims[0].0),
            others: claims[1..].iter().map(|(p, _)| key(p)).collect(),
        });
    }
    (claims.first().copied(), remarks)
}

/// The patch for `pod` given the policies of the cluster and what is known of their
/// Secrets. Pure.
pub fn inject(pod: &Pod, policies: &[FallbackConfigPolicy], secrets: &SecretFacts) -> Outcome {
    let (claimed, mut remarks) = claim(pod, policies);
    let Some((policy, role)) = claimed else {
        return Outcome {
            remarks,
            ..Outcome::default()
        };
    };
    let wanted = match role {
        Role::Importer => policy.spec.data_planes.container.as_deref(),
        Role::Backup => policy
            .spec
            .backup
            .as_ref()
            .and_then(|b| b.container.as_deref()),
    };
    let idx = match container_index(pod, wanted) {
        Ok(i) => i,
        Err(why) => {
            remarks.push(Remark::NoContainer {
                policy: key(policy),
                wanted: why,
            });
            return Outcome {
                remarks,
                ..Outcome::default()
            };
        }
    };
    let (desired, left_out) = desired(policy, role, secrets);
    if !left_out.is_empty() {
        let (names, why): (Vec<String>, Vec<String>) = left_out.into_iter().unzip();
        let mut why = why;
        why.dedup();
        remarks.push(Remark::SecretMissing { names, why });
    }
    let container = &pod.spec.as_ref().map_or(&[][..], |s| &s.containers)[idx];
    let vault = vault_settings(container);
    if !vault.is_empty() {
        remarks.push(Remark::VaultReference {
            names: vault.clone(),
        });
    }
    let injected = Injected {
        policy: key(policy),
        generation: policy.metadata.generation.unwrap_or(0),
        role,
        hash: env_hash(&desired),
        vault,
    };
    let existing: &[EnvVar] = container.env.as_deref().unwrap_or_default();
    let mut add = Vec::new();
    let mut overridden = Vec::new();
    for var in &desired {
        match existing.iter().find(|e| e.name == var.name) {
            Some(e) if e == var => {}
            Some(_) => overridden.push(var.name.clone()),
            None => add.push(var.clone()),
        }
    }
    if !overridden.is_empty() {
        remarks.push(Remark::UserOverride { names: overridden });
    }

    let mut patch = Vec::new();
    if !add.is_empty() {
        let path = format!("/spec/containers/{idx}/env");
        if container.env.is_none() {
            patch.push(json!({"op": "add", "path": path, "value": add}));
        } else {
            // NB: `add` at `-` appends; never replace the user's list.
            for var in add {
                patch.push(json!({"op": "add", "path": format!("{path}/-"), "value": var}));
            }
        }
    }
    let annotation = serde_json::to_string(&injected).unwrap_or_default();
    let current = pod.annotations().get(ANNOTATION);
    if !patch.is_empty() || current != Some(&annotation) {
        if pod.metadata.annotations.is_none() {
            patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: annotation}}));
        } else {
            patch.push(json!({"op": "add", "path": "/metadata/annotations/fallback.kong-dp.io~1injected", "value": annotation}));
        }
    }
    Outcome {
        patch,
        injected: Some(injected),
        remarks,
    }
}

/// What the annotation of `pod` says was injected, if it is readable.
pub fn recorded(pod: &Pod) -> Option<Injected> {
    serde_json::from_str(pod.annotations().get(ANNOTATION)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, created: &str, extra: Value) -> FallbackConfigPolicy {
        let mut spec = json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
            "storage": {
                "url": "s3://fallback/kong", "region": "eu-west-1",
                "endpoint": "http://minio.storage:9000",
                "readCredentials": {"secretName": "fallback-read"},
                "writeCredentials": {"secretName": "fallback-write"},
                "putOptions": {"serverSideEncryption": "aws:kms", "kmsKeyId": "alias/kong"}
            },
            "exporter": {"mode": "BackupPods"}
        });
        json_merge(&mut spec, extra);
        serde_json::from_value(json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": name, "namespace": "kong", "generation": 3, "creationTimestamp": created},
            "spec": spec
        }))
        .unwrap()
    }

    fn json_merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    json_merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(labels: Value, containers: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "kong", "labels": labels},
            "spec": {"containers": containers}
        }))
        .unwrap()
    }

    fn proxy() -> Value {
        json!([{"name": "proxy", "image": "kong/kong-gateway:3.6.1.4"}])
    }

    /// Applies the outcome's patch the way the apiserver does.
    fn patched(pod: &Pod, o: &Outcome) -> Pod {
        let mut doc = serde_json::to_value(pod).unwrap();
        let patch: json_patch::Patch =
            serde_json::from_value(Value::Array(o.patch.clone())).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        serde_json::from_value(doc).unwrap()
    }

    fn env_of(pod: &Pod, idx: usize) -> BTreeMap<String, Value> {
        pod.spec.as_ref().unwrap().containers[idx]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let v = match (e.value, e.value_from) {
                    (Some(v), _) => json!(v),
                    (None, Some(from)) => serde_json::to_value(from).unwrap(),
                    _ => Value::Null,
                };
                (e.name, v)
            })
            .collect()
    }

    /// Do no harm: a suspended policy's env points new data planes at the last
    /// configuration stored, which is what they should load in an outage.
    #[test]
    fn a_suspended_policy_still_injects() {
        let mut p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let running = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        p.spec.suspend = true;
        let suspended = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        assert!(!suspended.patch.is_empty());
        assert_eq!(
            env_of(&patched(&pod, &suspended), 0),
            env_of(&patched(&pod, &running), 0)
        );
    }

    #[test]
    fn mapped_secret_keys_are_referenced_under_kongs_env_names() {
        // Merged over fallback-read's `secretName`: the older spelling is taken out first.
        let mut p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        p.spec.storage.read_credentials = serde_json::from_value(json!({
            "name": "velero-creds",
            "keys": {"accessKeyId": "aws_access_key_id", "secretAccessKey": "aws_secret_access_key"}
        }))
        .unwrap();
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let o = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        let env = env_of(&patched(&pod, &o), 0);
        let r = |key: &str| json!({"secretKeyRef": {"name": "velero-creds", "key": key, "optional": true}});
        assert_eq!(env["AWS_ACCESS_KEY_ID"], r("aws_access_key_id"));
        assert_eq!(env["AWS_SECRET_ACCESS_KEY"], r("aws_secret_access_key"));
        // Not mapped: Kong's name, the default.
        assert_eq!(env["AWS_SESSION_TOKEN"], r("AWS_SESSION_TOKEN"));
        // A key known missing is named by the mapped key.
        let mut facts = SecretFacts::default();
        facts.record(
            "kong",
            "velero-creds",
            Some(["aws_access_key_id".to_owned()].into()),
        );
        let o = inject(&pod, std::slice::from_ref(&p), &facts);
        let env = env_of(&patched(&pod, &o), 0);
        assert_eq!(env["AWS_ACCESS_KEY_ID"], r("aws_access_key_id"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"), "{env:?}");
    }

    #[test]
    fn an_importer_gets_import_on_storage_region_endpoint_and_read_credential_references() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let o = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        let env = env_of(&patched(&pod, &o), 0);
        assert_eq!(env["KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"], "on");
        assert_eq!(
            env["KONG_CLUSTER_FALLBACK_CONFIG_STORAGE"],
            "s3://fallback/kong"
        );
        assert_eq!(env["AWS_REGION"], "eu-west-1");
        assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
        assert_eq!(
            env["AWS_CONFIG_STORAGE_ENDPOINT"],
            "http://minio.storage:9000"
        );
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"],
            json!({"secretKeyRef": {"name": "fallback-read", "key": "AWS_ACCESS_KEY_ID", "optional": true}})
        );
        assert_eq!(
            env["AWS_SESSION_TOKEN"],
            json!({"secretKeyRef": {"name": "fallback-read", "key": "AWS_SESSION_TOKEN", "optional": true}})
        );
        for never in [
            "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT",
            "KONG_NODE_ID",
            "KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG",
        ] {
            assert!(!env.contains_key(never), "{never}");
        }
        assert!(
            !serde_json::to_string(&o.patch)
                .unwrap()
                .contains("fallback-write")
        );
        let injected = recorded(&patched(&pod, &o)).unwrap();
        assert_eq!(
            (injected.policy.as_str(), injected.generation, injected.role),
            ("kong/prod", 3, Role::Importer)
        );
        assert!(o.remarks.is_empty());
    }

    #[test]
    fn a_backup_pod_gets_export_on_write_credentials_node_id_and_put_options() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(json!({"app": "kong-backup"}), proxy());
        let env = env_of(
            &patched(
                &pod,
                &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
            ),
            0,
        );
        assert_eq!(env["KONG_CLUSTER_FALLBACK_CONFIG_EXPORT"], "on");
        assert!(!env.contains_key("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"));
        assert_eq!(
            env["AWS_SECRET_ACCESS_KEY"],
            json!({"secretKeyRef": {"name": "fallback-write", "key": "AWS_SECRET_ACCESS_KEY", "optional": true}})
        );
        assert_eq!(
            env["KONG_NODE_ID"],
            json!({"fieldRef": {"fieldPath": "metadata.uid"}})
        );
        let args: Value = serde_json::from_str(
            env["KONG_CLUSTER_FALLBACK_EXPORT_S3_CONFIG"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            args,
            json!({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/kong"})
        );
    }

    #[test]
    fn every_secret_reference_is_optional_so_a_missing_secret_never_blocks_a_pod() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        for labels in [json!({"app": "kong-dp"}), json!({"app": "kong-backup"})] {
            let pod = pod(labels, proxy());
            let after = patched(
                &pod,
                &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
            );
            let refs: Vec<_> = after.spec.unwrap().containers[0]
                .env
                .clone()
                .unwrap()
                .into_iter()
                .filter_map(|e| e.value_from?.secret_key_ref)
                .collect();
            assert!(refs.len() >= 3, "{refs:?}");
            assert!(refs.iter().all(|r| r.optional == Some(true)), "{refs:?}");
        }
    }

    #[test]
    fn a_secret_or_key_known_to_be_missing_is_left_out_and_said() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let mut facts = SecretFacts::default();
        facts.record(
            "kong",
            "fallback-read",
            Some(["AWS_ACCESS_KEY_ID".to_owned()].into()),
        );
        let o = inject(&pod, std::slice::from_ref(&p), &facts);
        let env = env_of(&patched(&pod, &o), 0);
        assert!(env.contains_key("AWS_ACCESS_KEY_ID"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"), "{env:?}");
        assert_eq!(env["KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"], "on");
        let said = o
            .remarks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("AWS_SECRET_ACCESS_KEY not injected: Secret kong/fallback-read has no key AWS_SECRET_ACCESS_KEY"),
            "{said:?}"
        );

        facts.record("kong", "fallback-read", None);
        let o = inject(&pod, std::slice::from_ref(&p), &facts);
        let env = env_of(&patched(&pod, &o), 0);
        assert!(!env.contains_key("AWS_ACCESS_KEY_ID"), "{env:?}");
        assert!(
            o.remarks[0]
                .to_string()
                .contains("Secret kong/fallback-read does not exist")
        );
        // The recorded hash is of what was injected: the controller sees the drift once the
        // Secret is fixed.
        let fixed = SecretFacts::default();
        assert_ne!(
            o.injected.unwrap().hash,
            env_hash(&desired_env(&p, Role::Importer, &fixed))
        );
    }

    #[test]
    fn cluster_settings_from_a_vault_reference_are_recorded_and_said() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(
            json!({"app": "kong-dp"}),
            json!([{"name": "proxy", "image": "kong/kong-gateway:3.6.1.4", "env": [
                {"name": "KONG_CLUSTER_CERT", "value": "{vault://aws/kong/cluster-cert}"},
                {"name": "KONG_CLUSTER_CERT_KEY", "value": "{vault://env/cluster-key}"},
                {"name": "KONG_CLUSTER_CA_CERT", "value": "/etc/ca.crt"},
                {"name": "KONG_LOG_LEVEL", "value": "{vault://aws/level}"}
            ]}]),
        );
        let o = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        assert_eq!(o.injected.as_ref().unwrap().vault, ["KONG_CLUSTER_CERT"]);
        assert!(
            o.remarks.iter().any(
                |r| matches!(r, Remark::VaultReference { names } if names == &["KONG_CLUSTER_CERT"])
            ),
            "{:?}",
            o.remarks
        );
        assert_eq!(
            recorded(&patched(&pod, &o)).unwrap().vault,
            ["KONG_CLUSTER_CERT"]
        );
    }

    #[test]
    fn gcs_uses_the_service_account_key_and_no_aws_settings() {
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"storage": {"url": "gcs://fallback/kong", "endpoint": null, "region": null, "putOptions": null}}),
        );
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let env = env_of(
            &patched(
                &pod,
                &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
            ),
            0,
        );
        assert_eq!(
            env["GCP_SERVICE_ACCOUNT"],
            json!({"secretKeyRef": {"name": "fallback-read", "key": "GCP_SERVICE_ACCOUNT", "optional": true}})
        );
        assert!(env.keys().all(|k| !k.starts_with("AWS_")), "{env:?}");
    }

    #[test]
    fn ambient_credentials_inject_no_secret_reference() {
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"storage": {"readCredentials": {"secretName": null, "ambient": true}}}),
        );
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let env = env_of(
            &patched(
                &pod,
                &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
            ),
            0,
        );
        assert!(!env.contains_key("AWS_ACCESS_KEY_ID"));
        assert_eq!(env["KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"], "on");
    }

    #[test]
    fn the_proxy_container_is_chosen_among_several_and_init_containers_are_untouched() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let mut pod = pod(
            json!({"app": "kong-dp"}),
            json!([{"name": "sidecar", "image": "envoy"}, {"name": "proxy", "image": "kong"}]),
        );
        pod.spec.as_mut().unwrap().init_containers = Some(vec![
            serde_json::from_value(json!({"name": "clear-stale-pid", "image": "kong"})).unwrap(),
        ]);
        let after = patched(
            &pod,
            &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
        );
        assert!(env_of(&after, 0).is_empty());
        assert!(env_of(&after, 1).contains_key("KONG_CLUSTER_FALLBACK_CONFIG_IMPORT"));
        assert_eq!(after.spec.unwrap().init_containers.unwrap()[0].env, None);
    }

    #[test]
    fn a_named_container_is_used_and_a_missing_one_is_reported() {
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"dataPlanes": {"container": "gateway"}}),
        );
        let two = pod(
            json!({"app": "kong-dp"}),
            json!([{"name": "gateway", "image": "kong"}, {"name": "x", "image": "y"}]),
        );
        assert!(
            env_of(
                &patched(
                    &two,
                    &inject(&two, std::slice::from_ref(&p), &SecretFacts::default())
                ),
                0
            )
            .contains_key("KONG_CLUSTER_FALLBACK_CONFIG_STORAGE")
        );

        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let ambiguous = pod(
            json!({"app": "kong-dp"}),
            json!([{"name": "a", "image": "kong"}, {"name": "b", "image": "y"}]),
        );
        let o = inject(
            &ambiguous,
            std::slice::from_ref(&p),
            &SecretFacts::default(),
        );
        assert!(o.patch.is_empty());
        assert!(
            matches!(&o.remarks[0], Remark::NoContainer { .. }),
            "{:?}",
            o.remarks
        );
        assert!(
            o.remarks[0]
                .to_string()
                .contains("spec.dataPlanes.container")
        );
    }

    #[test]
    fn existing_env_is_kept_appended_to_and_user_values_win() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(
            json!({"app": "kong-dp"}),
            json!([{"name": "proxy", "image": "kong",
                    "env": [{"name": "KONG_ROLE", "value": "data_plane"},
                            {"name": "AWS_REGION", "value": "us-east-2"}],
                    "envFrom": [{"secretRef": {"name": "kong-env"}}]}]),
        );
        let o = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        let after = patched(&pod, &o);
        let env = env_of(&after, 0);
        assert_eq!(env["KONG_ROLE"], "data_plane");
        assert_eq!(env["AWS_REGION"], "us-east-2", "the user's value wins");
        assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
        assert_eq!(
            o.remarks,
            [Remark::UserOverride {
                names: vec!["AWS_REGION".into()]
            }]
        );
        let first = &after.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            first.env.as_ref().unwrap()[0].name,
            "KONG_ROLE",
            "appended, not replaced"
        );
        assert!(first.env_from.is_some());
    }

    #[test]
    fn re_injection_is_a_no_op_and_a_changed_policy_is_drift() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let once = patched(
            &pod,
            &inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
        );
        let again = inject(&once, std::slice::from_ref(&p), &SecretFacts::default());
        assert!(again.patch.is_empty(), "{:?}", again.patch);
        assert_eq!(again.injected, recorded(&once));

        let changed = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"storage": {"url": "s3://fallback/other"}}),
        );
        let desired = inject(
            &once,
            std::slice::from_ref(&changed),
            &SecretFacts::default(),
        )
        .injected
        .unwrap();
        assert_ne!(
            desired.hash,
            recorded(&once).unwrap().hash,
            "drift is visible"
        );
    }

    #[test]
    fn unrelated_pods_and_other_namespaces_get_nothing() {
        let p = policy("prod", "2026-01-01T00:00:00Z", json!({}));
        let other = pod(json!({"app": "web"}), proxy());
        assert_eq!(
            inject(&other, std::slice::from_ref(&p), &SecretFacts::default()),
            Outcome::default()
        );
        let mut elsewhere = pod(json!({"app": "kong-dp"}), proxy());
        elsewhere.metadata.namespace = Some("other".into());
        assert_eq!(
            inject(
                &elsewhere,
                std::slice::from_ref(&p),
                &SecretFacts::default()
            ),
            Outcome::default()
        );
    }

    #[test]
    fn an_invalid_policy_injects_nothing() {
        // BackupPods mode needs write credentials.
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"storage": {"writeCredentials": null}}),
        );
        assert!(!crate::api::validate(&p.spec).is_empty());
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        assert_eq!(
            inject(&pod, std::slice::from_ref(&p), &SecretFacts::default()),
            Outcome::default()
        );
    }

    #[test]
    fn both_roles_of_one_policy_is_a_conflict_with_nothing_injected() {
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"backup": {"selector": {"matchLabels": null, "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["kong-dp", "kong-backup"]}
            ]}}}),
        );
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        let o = inject(&pod, std::slice::from_ref(&p), &SecretFacts::default());
        assert!(o.patch.is_empty());
        assert_eq!(
            o.remarks,
            [Remark::BothRoles {
                policy: "kong/prod".into()
            }]
        );
    }

    #[test]
    fn overlapping_policies_resolve_to_the_oldest_and_are_reported() {
        let old = policy("b-old", "2026-01-01T00:00:00Z", json!({}));
        let new = policy(
            "a-new",
            "2026-02-01T00:00:00Z",
            json!({"storage": {"url": "s3://fallback/new"}}),
        );
        let pod = pod(json!({"app": "kong-dp"}), proxy());
        for order in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
            let o = inject(&pod, &order, &SecretFacts::default());
            assert_eq!(o.injected.as_ref().unwrap().policy, "kong/b-old");
            assert_eq!(
                o.remarks,
                [Remark::Overlap {
                    winner: "kong/b-old".into(),
                    others: vec!["kong/a-new".into()]
                }]
            );
        }
    }

    #[test]
    fn a_selector_selects_what_kubes_selector_matches() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let selectors: Vec<LabelSelector> = [
            json!({"matchLabels": {"app": "kong-dp"}}),
            json!({"matchLabels": {"app": "kong-dp", "tier": "edge"}}),
            json!({"matchLabels": {"app": "kong-dp"}, "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["edge", "core"]}]}),
            json!({"matchLabels": {"app": "kong-dp"}, "matchExpressions": [
                {"key": "canary", "operator": "DoesNotExist"}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["other"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let label_sets: Vec<BTreeMap<String, String>> = [
            json!({}),
            json!({"app": "kong-dp"}),
            json!({"app": "kong-dp", "tier": "edge"}),
            json!({"app": "kong-dp", "tier": "batch"}),
            json!({"app": "kong-dp", "tier": "core", "canary": "1"}),
            json!({"app": "other", "tier": "edge"}),
            json!({"app": "kong-dpx"}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let mut selected = 0;
        for selector in &selectors {
            let kube = Selector::try_from(selector.clone()).unwrap();
            for labels in &label_sets {
                assert_eq!(
                    selects(selector, labels),
                    kube.matches(labels),
                    "{selector:?} on {labels:?}"
                );
                selected += usize::from(selects(selector, labels));
            }
        }
        // Both answers occur: the table tells a selector that never matches from a right one.
        assert!(selected > 5 && selected < selectors.len() * label_sets.len());
    }

    #[test]
    fn selectors_with_expressions_are_evaluated() {
        let p = policy(
            "prod",
            "2026-01-01T00:00:00Z",
            json!({"dataPlanes": {"selector": {"matchLabels": null, "matchExpressions": [
                {"key": "app", "operator": "In", "values": ["kong-dp", "kong-edge"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]}}}),
        );
        let yes = pod(json!({"app": "kong-edge"}), proxy());
        let no = pod(json!({"app": "kong-edge", "canary": "1"}), proxy());
        assert!(
            inject(&yes, std::slice::from_ref(&p), &SecretFacts::default())
                .injected
                .is_some()
        );
        assert!(
            inject(&no, std::slice::from_ref(&p), &SecretFacts::default())
                .injected
                .is_none()
        );
    }
}

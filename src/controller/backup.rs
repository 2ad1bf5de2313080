//! `exporter.mode: BackupPods`: native Kong backup pods export, and the operator's Lease
//! decides which ones. Per Kong version, the leading replica designates one Ready backup
//! pod that runs that version (it keeps its choice while that pod stays usable, else takes
//! the oldest) and registers the pod's Kong node id in that version's `election/` prefix
//! only, with the mirror, so Kong's own election on every backup pod of that version elects
//! exactly that pod. A version without such a pod gets no registration (Kong's own election
//! runs there as if the operator were not there) and the status names it.
//!
//! The node id is the pod's UID, which the injection gives backup pods as `KONG_NODE_ID`
//! (downward API, `metadata.uid`). Only pods whose injection is current and whose
//! `KONG_NODE_ID` is that injected reference are designated: a pod created before the
//! injection, or one whose container sets `KONG_NODE_ID` itself (the user's value wins),
//! runs under another node id, and registering its UID would elect a node that does not
//! exist. Such pods are reported instead.
//!
//! Kong before 3.6 has no native election: every backup pod with export on writes. The
//! mirror cannot stop them, so the status says so when more than one backup pod runs such
//! a version.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::plan::{SetupError, fingerprint, pod_version, selector_string, write_access};
use super::secrets::SecretReader;
use crate::api::{BackupDesignation, FallbackConfigPolicy};
use crate::inject::{self, Role, SecretFacts};
use crate::kong::{KongVersion, StorageUrl, env};
use crate::storage::Access;

/// Whether a pod can export: running, Ready, not terminating, with a UID.
pub fn ready(pod: &Pod) -> bool {
    let running = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running");
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    running && ready && pod.metadata.deletion_timestamp.is_none() && pod.metadata.uid.is_some()
}

/// Why a Ready backup pod's Kong node id is not known to be its UID, if it is not. Pure.
pub fn unknown_node_id(
    pod: &Pod,
    policy: &FallbackConfigPolicy,
    secrets: &SecretFacts,
) -> Option<String> {
    let key = format!(
        "{}/{}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    );
    let current = inject::env_hash(&inject::desired_env(policy, Role::Backup, secrets));
    match inject::recorded(pod) {
        Some(i) if i.policy == key && i.role == Role::Backup && i.hash == current => {}
        Some(_) => {
            return Some(
                "its injection is not current (created before a policy change): restart it".into(),
            );
        }
        None => {
            return Some(
                "it was created without the injection (before the policy, or while the webhook was unavailable): restart it"
                    .into(),
            );
        }
    }
    let wanted = policy
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.container.as_deref());
    let Some(container) = super::plan::kong_container(pod, wanted) else {
        return Some("it has no Kong container (set spec.backup.container)".into());
    };
    let from_uid = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env::NODE_ID)
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .is_some_and(|f| f.field_path == "metadata.uid");
    (!from_uid).then(|| {
        format!(
            "its container sets {} itself, so its Kong node id is not its UID: remove that variable",
            env::NODE_ID
        )
    })
}

/// The backup pods designated per version, and what could not be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Designation {
    /// One pod per version that has a usable one, in version order.
    pub designated: Vec<BackupDesignation>,
    /// Versions with no Ready backup pod of a known node id: no registration there.
    pub uncovered: Vec<String>,
    /// Ready backup pods that cannot be designated: (pod, why).
    pub unusable: Vec<(String, String)>,
}

impl Designation {
    /// What the `Leading` condition says of it: a problem (versions that no usable backup pod
    /// runs get no registration: Kong's own election decides there) or a note (pods whose
    /// node id is unknown, when every version is covered). Pure.
    pub fn verdict(&self) -> (Option<SetupError>, Option<String>) {
        if !self.uncovered.is_empty() {
            let mut message = format!(
                "no Ready backup pod with a known Kong node id runs Kong {}: those versions get no registration (Kong's own election decides there)",
                self.uncovered.join(", ")
            );
            if !self.unusable.is_empty() {
                message.push_str(&format!("; {}", describe_unusable(&self.unusable)));
            }
            return (Some(("VersionsWithoutBackupPod".into(), message)), None);
        }
        if self.unusable.is_empty() {
            return (None, None);
        }
        let note = format!(
            "backup pods not designated because their Kong node id is not known: {}",
            describe_unusable(&self.unusable)
        );
        (None, Some(note))
    }
}

/// Designates, for each version (`versions`, else every version the Ready backup pods run),
/// one Ready backup pod of that version whose node id is known: `current[version]` while
/// it stays so, else the oldest (then by name), the same on every replica. Pure.
pub fn designate(
    pods: &[Pod],
    policy: &FallbackConfigPolicy,
    secrets: &SecretFacts,
    versions: &[String],
    current: &BTreeMap<String, String>,
) -> Designation {
    let container = policy
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.container.as_deref());
    let trusted = &policy.spec.data_planes.image_repositories;
    let mut out = Designation::default();
    let mut by_version: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for pod in pods.iter().filter(|p| ready(p)) {
        let version = match pod_version(pod, container, trusted) {
            Ok(v) => v,
            Err(why) => {
                out.unusable.push((pod.name_any(), why));
                continue;
            }
        };
        seen.insert(version.clone());
        match unknown_node_id(pod, policy, secrets) {
            Some(why) => out.unusable.push((pod.name_any(), why)),
            None => by_version.entry(version).or_default().push(pod),
        }
    }
    let wanted: BTreeSet<String> = if versions.is_empty() {
        seen
    } else {
        versions.iter().cloned().collect()
    };
    for version in wanted {
        let mut candidates = by_version.remove(&version).unwrap_or_default();
        let kept = candidates
            .iter()
            .find(|p| current.get(&version).map(String::as_str) == Some(p.name_any().as_str()))
            .copied();
        candidates.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.name_any(),
            )
        });
        match kept.or(candidates.first().copied()) {
            Some(pod) => out.designated.push(BackupDesignation {
                version,
                pod: pod.name_any(),
                node_id: pod.metadata.uid.clone().unwrap_or_default(),
            }),
            None => out.uncovered.push(version),
        }
    }
    out.unusable.sort();
    out
}

/// A remark for versions without native election (before 3.6) run by several backup pods.
pub fn pre_election_note(versions: &[String], backup_pods: usize) -> Option<String> {
    let old: Vec<&str> = versions
        .iter()
        .filter(|v| {
            v.parse::<KongVersion>()
                .is_ok_and(|k| (k.major(), k.minor()) < (3, 6))
        })
        .map(String::as_str)
        .collect();
    (backup_pods > 1 && !old.is_empty()).then(|| {
        format!(
            "Kong {} has no native election: all {backup_pods} backup pods export and overwrite each other; run one backup pod for these versions",
            old.join(", ")
        )
    })
}

/// What the mirrors of the designated backup pods need.
pub struct BackupPlan {
    pub fingerprint: u64,
    pub url: StorageUrl,
    pub access: Access,
    pub designation: Designation,
    pub notes: Vec<String>,
}

/// Designates the backup pods of `policy` (keeping `current` choices that are still usable).
pub async fn build(
    client: &Client,
    reader: &SecretReader,
    policy: &FallbackConfigPolicy,
    secrets: &SecretFacts,
    current: &BTreeMap<String, String>,
) -> Result<BackupPlan, SetupError> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let backup = spec.backup.as_ref().ok_or_else(|| {
        (
            "InvalidSpec".to_owned(),
            "spec.backup is required with exporter.mode BackupPods".to_owned(),
        )
    })?;
    let url = StorageUrl::parse(&spec.storage.url)
        .map_err(|e| ("InvalidSpec".to_owned(), e.to_string()))?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&selector_string(&backup.selector)))
        .await
        .map_err(|e| {
            (
                "PodsUnreadable".to_owned(),
                format!("cannot list the backup pods: {e}"),
            )
        })?
        .items;
    let designation = designate(&pods, policy, secrets, &spec.exporter.versions, current);
    if designation.designated.is_empty() {
        let mut why = format!(
            "no Ready backup pod with a known Kong node id matches spec.backup.selector ({} matching)",
            pods.len()
        );
        if !designation.unusable.is_empty() {
            why.push_str(&format!(": {}", describe_unusable(&designation.unusable)));
        }
        return Err(("NoBackupPod".to_owned(), why));
    }
    let versions: Vec<String> = designation
        .designated
        .iter()
        .map(|d| d.version.clone())
        .collect();
    let notes = pre_election_note(&versions, pods.iter().filter(|p| ready(p)).count())
        .into_iter()
        .collect();
    let (access, secret_versions) = write_access(reader, &ns, spec, &url).await?;
    let inputs =
        serde_json::to_string(&(&spec.storage, &designation.designated)).unwrap_or_default();
    Ok(BackupPlan {
        fingerprint: fingerprint(&[&inputs, &secret_versions.join(",")]),
        url,
        access,
        designation,
        notes,
    })
}

/// `pod (why); pod (why)`, at most 20.
pub fn describe_unusable(unusable: &[(String, String)]) -> String {
    unusable
        .iter()
        .take(20)
        .map(|(pod, why)| format!("{pod}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(versions: &[&str]) -> FallbackConfigPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "prod", "namespace": "kong", "generation": 2},
            "spec": {
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
                "storage": {"url": "s3://fallback/kong", "region": "eu-west-1",
                            "readCredentials": {"secretName": "r"}, "writeCredentials": {"secretName": "w"}},
                "exporter": {"mode": "BackupPods", "versions": versions}
            }
        }))
        .unwrap()
    }

    /// A backup pod as the webhook injects it (`injected`), or as created without it.
    fn pod(name: &str, created: &str, image: &str, ready: bool, injected: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kong", "uid": format!("uid-{name}"),
                         "creationTimestamp": created, "labels": {"app": "kong-backup"}},
            "spec": {"containers": [{"name": "proxy", "image": image}]},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap();
        if injected {
            let o = inject::inject(&pod, &[policy(&[])], &SecretFacts::default());
            let mut doc = serde_json::to_value(&pod).unwrap();
            let patch: json_patch::Patch =
                serde_json::from_value(serde_json::Value::Array(o.patch)).unwrap();
            json_patch::patch(&mut doc, &patch).unwrap();
            pod = serde_json::from_value(doc).unwrap();
        }
        pod
    }

    fn names(d: &Designation) -> Vec<(String, String)> {
        d.designated
            .iter()
            .map(|d| (d.version.clone(), d.pod.clone()))
            .collect()
    }

    const V36: &str = "kong/kong-gateway:3.6.1.4";
    const V37: &str = "kong/kong-gateway:3.7.0.0";

    #[test]
    fn each_version_gets_a_pod_that_runs_it_and_a_version_without_one_gets_none() {
        let pods = [
            pod("a", "2026-01-02T00:00:00Z", V36, true, true),
            pod("b", "2026-01-01T00:00:00Z", V37, true, true),
            pod("c", "2026-01-03T00:00:00Z", V36, true, true),
        ];
        let p = policy(&["3.6.1.4", "3.7.0.0", "3.8.0.0"]);
        let d = designate(
            &pods,
            &p,
            &SecretFacts::default(),
            &p.spec.exporter.versions,
            &BTreeMap::new(),
        );
        assert_eq!(
            names(&d),
            [
                ("3.6.1.4".into(), "a".into()),
                ("3.7.0.0".into(), "b".into())
            ]
        );
        assert_eq!(d.designated[1].node_id, "uid-b");
        assert_eq!(d.uncovered, ["3.8.0.0"]);
        // Without explicit versions: every version the Ready backup pods run.
        let d = designate(&pods, &p, &SecretFacts::default(), &[], &BTreeMap::new());
        assert_eq!(d.designated.len(), 2);
        assert!(d.uncovered.is_empty());
    }

    #[test]
    fn the_choice_sticks_while_the_pod_stays_usable() {
        let mut pods = vec![
            pod("a", "2026-01-02T00:00:00Z", V36, true, true),
            pod("c", "2026-01-03T00:00:00Z", V36, true, true),
        ];
        let p = policy(&[]);
        let current = BTreeMap::from([("3.6.1.4".to_owned(), "c".to_owned())]);
        let d = designate(&pods, &p, &SecretFacts::default(), &[], &current);
        assert_eq!(names(&d), [("3.6.1.4".into(), "c".into())]);
        pods[1] = pod("c", "2026-01-03T00:00:00Z", V36, false, true);
        let d = designate(&pods, &p, &SecretFacts::default(), &[], &current);
        assert_eq!(names(&d), [("3.6.1.4".into(), "a".into())]);
    }

    #[test]
    fn pods_whose_node_id_is_not_known_are_reported_not_designated() {
        let mut own_id = pod("own-id", "2026-01-01T00:00:00Z", V36, true, true);
        let env = own_id.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap();
        env.retain(|e| e.name != "KONG_NODE_ID");
        env.push(k8s_openapi::api::core::v1::EnvVar {
            name: "KONG_NODE_ID".into(),
            value: Some("4f1a0c7e-0000-4000-8000-000000000001".into()),
            ..Default::default()
        });
        let pods = [
            own_id,
            pod("early", "2026-01-01T00:00:00Z", V36, true, false),
            pod("ok", "2026-01-05T00:00:00Z", V36, true, true),
        ];
        let p = policy(&[]);
        let d = designate(&pods, &p, &SecretFacts::default(), &[], &BTreeMap::new());
        assert_eq!(names(&d), [("3.6.1.4".into(), "ok".into())]);
        let unusable: Vec<&str> = d.unusable.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(unusable, ["early", "own-id"]);
        assert!(
            d.unusable[0].1.contains("without the injection"),
            "{:?}",
            d.unusable
        );
        assert!(
            d.unusable[1].1.contains("sets KONG_NODE_ID itself"),
            "{:?}",
            d.unusable
        );
        // A policy change makes the injection stale: not designated either.
        let mut changed = p.clone();
        changed.spec.storage.region = Some("us-west-2".into());
        let d = designate(
            &pods,
            &changed,
            &SecretFacts::default(),
            &[],
            &BTreeMap::new(),
        );
        assert!(d.designated.is_empty());
        assert_eq!(d.uncovered, ["3.6.1.4"]);
    }

    #[test]
    fn terminating_pods_are_not_ready() {
        let mut p = pod("a", "2026-01-01T00:00:00Z", V36, true, false);
        assert!(ready(&p));
        p.metadata.deletion_timestamp = p.metadata.creation_timestamp.clone();
        assert!(!ready(&p));
    }

    #[test]
    fn several_backup_pods_before_3_6_are_reported() {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(
            pre_election_note(&v(&["3.5.0.2"]), 2)
                .unwrap()
                .contains("3.5.0.2")
        );
        assert_eq!(pre_election_note(&v(&["3.5.0.2"]), 1), None);
        assert_eq!(pre_election_note(&v(&["3.6.0.0"]), 3), None);
    }
}

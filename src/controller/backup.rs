//! `exporter.mode: BackupPods`: native Kong backup pods export, and the operator's Lease
//! decides which one. The leading replica designates one Ready backup pod (it keeps its
//! choice while that pod stays Ready, else takes the oldest Ready one) and registers the
//! pod's Kong node id in the store's `election/` prefix with the mirror, so Kong's own
//! election on every backup pod elects exactly that pod. The node id is the pod's UID: the
//! injection gives backup pods `KONG_NODE_ID` from `metadata.uid` through the downward API.
//!
//! Kong before 3.6 has no native election: every backup pod with export on writes. The
//! mirror cannot stop them, so the status says so when more than one backup pod runs such
//! a version.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::exporters::fingerprint;
use super::plan::{SetupError, pod_version, selector_string, write_access};
use crate::api::FallbackConfigPolicy;
use crate::kong::{KongVersion, StorageUrl};
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

/// The backup pod to designate: `current` while it stays Ready, else the oldest Ready pod
/// (then by name), so the choice is stable and the same on every replica. Pure.
pub fn choose<'a>(pods: &'a [Pod], current: Option<&str>) -> Option<&'a Pod> {
    let mut ready: Vec<&Pod> = pods.iter().filter(|p| ready(p)).collect();
    if let Some(p) = ready
        .iter()
        .find(|p| Some(p.name_any().as_str()) == current)
    {
        return Some(p);
    }
    ready.sort_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.name_any(),
        )
    });
    ready.first().copied()
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

/// What the mirror of a designated backup pod needs.
pub struct BackupPlan {
    pub fingerprint: u64,
    pub url: StorageUrl,
    pub access: Access,
    pub pod: String,
    pub node_id: String,
    pub versions: Vec<String>,
    pub notes: Vec<String>,
}

/// Designates a backup pod of `policy` (keeping `current` if it is still Ready).
pub async fn build(
    client: &Client,
    policy: &FallbackConfigPolicy,
    current: Option<&str>,
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
    let chosen = choose(&pods, current).ok_or_else(|| {
        (
            "NoBackupPod".to_owned(),
            format!(
                "no Ready pod matches spec.backup.selector ({} matching)",
                pods.len()
            ),
        )
    })?;
    let versions = if spec.exporter.versions.is_empty() {
        vec![
            pod_version(chosen, backup.container.as_deref())
                .map_err(|e| ("NoVersions".to_owned(), e))?,
        ]
    } else {
        spec.exporter.versions.clone()
    };
    let notes = pre_election_note(&versions, pods.iter().filter(|p| ready(p)).count())
        .into_iter()
        .collect();
    let (access, secret_versions) = write_access(client, &ns, spec, &url).await?;
    let node_id = chosen.metadata.uid.clone().unwrap_or_default();
    let inputs = serde_json::to_string(&(&spec.storage, &versions)).unwrap_or_default();
    Ok(BackupPlan {
        fingerprint: fingerprint(&[&inputs, &node_id, &secret_versions.join(",")]),
        url,
        access,
        pod: chosen.name_any(),
        node_id,
        versions,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, created: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "creationTimestamp": created},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_oldest_ready_pod_is_chosen_and_the_choice_sticks_while_it_is_ready() {
        let pods = [
            pod("b", "2026-01-02T00:00:00Z", true),
            pod("a", "2026-01-03T00:00:00Z", true),
            pod("c", "2026-01-01T00:00:00Z", false),
        ];
        assert_eq!(choose(&pods, None).map(|p| p.name_any()), Some("b".into()));
        assert_eq!(
            choose(&pods, Some("a")).map(|p| p.name_any()),
            Some("a".into()),
            "a Ready current choice stays"
        );
        assert_eq!(
            choose(&pods, Some("c")).map(|p| p.name_any()),
            Some("b".into()),
            "a current choice that is not Ready is replaced"
        );
        assert!(choose(&pods[2..], None).is_none());
    }

    #[test]
    fn terminating_pods_are_not_chosen() {
        let mut p = pod("a", "2026-01-01T00:00:00Z", true);
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

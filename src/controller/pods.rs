//! Which pods a policy covers, and which of them lack a current injection: created before
//! the policy, during a webhook outage (`failurePolicy: Ignore` lets them start), or before
//! a policy change. Read from the pods' metadata only (labels and the injection
//! annotation), so the cache stays small. Pure.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;

use crate::api::{FallbackConfigPolicy, PodCounts};
use crate::inject::{self, Role};

/// At most this many pod names are listed in status.
pub const LISTED: usize = 20;

/// What a policy's pods look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodReport {
    pub counts: PodCounts,
    /// Every pod without a current injection, sorted by name.
    pub not_injected: Vec<String>,
    /// Pods both selectors of the policy match.
    pub conflicts: Vec<String>,
    /// Pods this policy selects that an older policy claims: (pod, that policy).
    pub claimed_by_others: Vec<(String, String)>,
    /// Importers that take start-up settings from a vault reference: (pod, settings).
    pub cannot_engage: Vec<(String, Vec<String>)>,
}

/// The report of `policy` over the pods of the cluster (others' namespaces are skipped);
/// `policies` are all the policies, to tell which pods an older one claims.
pub fn report<P: std::borrow::Borrow<FallbackConfigPolicy>>(
    policy: &FallbackConfigPolicy,
    policies: &[P],
    pods: &[Arc<PartialObjectMeta<Pod>>],
    secrets: &inject::SecretFacts,
) -> PodReport {
    let ns = policy.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", policy.name_any());
    let mut r = PodReport::default();
    let hash = |role| inject::env_hash(&inject::desired_env(policy, role, secrets));
    let (importer_hash, backup_hash) = (hash(Role::Importer), hash(Role::Backup));
    for pod in pods
        .iter()
        // NB: the field, not `namespace()`, which clones: this runs for every pod in scope.
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let role = match inject::role(policy, pod.labels()) {
            Ok(Some(role)) => role,
            Ok(None) => continue,
            Err(_) => {
                r.conflicts.push(pod.name_any());
                continue;
            }
        };
        // Another (older) policy claims this pod: it is that policy's, not ours.
        if let (Some((winner, _)), _) = inject::claim_by_labels(&ns, pod.labels(), policies)
            && winner.name_any() != policy.name_any()
        {
            r.claimed_by_others
                .push((pod.name_any(), format!("{ns}/{}", winner.name_any())));
            continue;
        }
        let expected = match role {
            Role::Importer => {
                r.counts.importers += 1;
                &importer_hash
            }
            Role::Backup => {
                r.counts.backups += 1;
                &backup_hash
            }
        };
        let recorded = pod
            .annotations()
            .get(inject::ANNOTATION)
            .and_then(|a| serde_json::from_str::<inject::Injected>(a).ok());
        if let Some(i) = recorded.as_ref().filter(|i| !i.vault.is_empty()) {
            r.cannot_engage.push((pod.name_any(), i.vault.clone()));
        }
        let current =
            recorded.is_some_and(|i| i.policy == key && i.role == role && &i.hash == expected);
        if !current {
            r.not_injected.push(pod.name_any());
        }
    }
    r.not_injected.sort();
    r.claimed_by_others.sort();
    r.conflicts.sort();
    r.cannot_engage.sort();
    r.counts.not_injected = i32::try_from(r.not_injected.len()).unwrap_or(i32::MAX);
    r.counts.not_injected_pods = r.not_injected.iter().take(LISTED).cloned().collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> FallbackConfigPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "prod", "namespace": "kong", "generation": 2},
            "spec": {
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
                "storage": {"url": "s3://fallback/kong", "region": "eu-west-1",
                            "readCredentials": {"secretName": "r"}, "writeCredentials": {"secretName": "w"}},
                "exporter": {"mode": "BackupPods"}
            }
        }))
        .unwrap()
    }

    fn meta(
        name: &str,
        ns: &str,
        app: &str,
        annotation: Option<String>,
    ) -> Arc<PartialObjectMeta<Pod>> {
        let mut annotations = serde_json::Map::new();
        if let Some(a) = annotation {
            annotations.insert(inject::ANNOTATION.into(), json!(a));
        }
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": ns, "labels": {"app": app}, "annotations": annotations}
            }))
            .unwrap(),
        )
    }

    fn injected(p: &FallbackConfigPolicy, role: Role) -> String {
        serde_json::to_string(&inject::Injected {
            policy: "kong/prod".into(),
            generation: 2,
            role,
            hash: inject::env_hash(&inject::desired_env(p, role, &Default::default())),
            vault: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn importers_with_vault_references_are_reported() {
        let p = policy();
        let mut a: inject::Injected = serde_json::from_str(&injected(&p, Role::Importer)).unwrap();
        a.vault = vec!["KONG_CLUSTER_CERT".into()];
        let pods = vec![
            meta(
                "dp-1",
                "kong",
                "kong-dp",
                Some(serde_json::to_string(&a).unwrap()),
            ),
            meta(
                "dp-2",
                "kong",
                "kong-dp",
                Some(injected(&p, Role::Importer)),
            ),
        ];
        let r = report(&p, std::slice::from_ref(&p), &pods, &Default::default());
        assert_eq!(
            r.cannot_engage,
            [("dp-1".to_owned(), vec!["KONG_CLUSTER_CERT".to_owned()])]
        );
        assert!(r.not_injected.is_empty(), "{:?}", r.not_injected);
    }

    #[test]
    fn counts_roles_and_lists_pods_without_a_current_injection() {
        let p = policy();
        let mut stale: inject::Injected =
            serde_json::from_str(&injected(&p, Role::Importer)).unwrap();
        stale.hash = "0123456789ab".into();
        let pods = [
            meta(
                "dp-ok",
                "kong",
                "kong-dp",
                Some(injected(&p, Role::Importer)),
            ),
            meta("dp-none", "kong", "kong-dp", None),
            meta(
                "dp-stale",
                "kong",
                "kong-dp",
                Some(serde_json::to_string(&stale).unwrap()),
            ),
            meta(
                "bk-ok",
                "kong",
                "kong-backup",
                Some(injected(&p, Role::Backup)),
            ),
            meta(
                "bk-wrong-role",
                "kong",
                "kong-backup",
                Some(injected(&p, Role::Importer)),
            ),
            meta("web", "kong", "web", None),
            meta("dp-elsewhere", "other", "kong-dp", None),
        ];
        let r = report(&p, std::slice::from_ref(&p), &pods, &Default::default());
        assert_eq!((r.counts.importers, r.counts.backups), (3, 2));
        assert_eq!(r.not_injected, ["bk-wrong-role", "dp-none", "dp-stale"]);
        assert_eq!(r.counts.not_injected, 3);
        assert_eq!(r.counts.not_injected_pods, r.not_injected);
    }

    #[test]
    fn pods_an_older_policy_claims_are_reported_not_counted() {
        let old = {
            let mut p = policy();
            p.metadata.name = Some("old".into());
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
            p
        };
        let mut new = policy();
        new.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let all = [old.clone(), new.clone()];
        let pods = [meta("dp-0", "kong", "kong-dp", None)];
        let r = report(&new, &all, &pods, &Default::default());
        assert_eq!(
            r.claimed_by_others,
            [("dp-0".to_owned(), "kong/old".to_owned())]
        );
        assert_eq!(r.counts.importers, 0);
        assert_eq!(
            report(&old, &all, &pods, &Default::default())
                .counts
                .importers,
            1
        );
    }

    #[test]
    fn the_list_in_status_is_bounded() {
        let p = policy();
        let pods: Vec<_> = (0..50)
            .map(|i| meta(&format!("dp-{i:02}"), "kong", "kong-dp", None))
            .collect();
        let r = report(&p, std::slice::from_ref(&p), &pods, &Default::default());
        assert_eq!(r.counts.not_injected, 50);
        assert_eq!(r.counts.not_injected_pods.len(), LISTED);
    }
}

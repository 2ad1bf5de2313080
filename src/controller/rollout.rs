//! `spec.dataPlanes.rollout: true`: restart the workloads whose pods lack the current
//! injection, the way `kubectl rollout restart` does (a `kubectl.kubernetes.io/restartedAt`
//! annotation on the pod template), so their new pods are injected. Bounded: a workload
//! is restarted at most once per [`MIN_GAP`], and at most [`PER_PASS`] per reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The least time between two restarts of one workload.
pub const MIN_GAP: Duration = Duration::from_secs(600);
/// The most workloads restarted by one reconcile.
pub const PER_PASS: usize = 3;

/// A workload that owns pods: (kind, namespace, name).
pub type Workload = (String, String, String);

/// The owner of a pod as far as its metadata tells: a ReplicaSet is resolved to its
/// Deployment by the caller.
pub fn direct_owner(pod: &PartialObjectMeta<Pod>) -> Option<(String, String)> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// Restarts done, to keep to the rate.
#[derive(Default)]
pub struct Rollouts {
    done: Mutex<HashMap<Workload, Instant>>,
}

impl Rollouts {
    fn due(&self, w: &Workload) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(w)
            .is_none_or(|t| t.elapsed() >= MIN_GAP)
    }

    fn mark(&self, w: Workload) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w, Instant::now());
    }

    /// Restarts the workloads of `pods` (those without a current injection), within the
    /// rate; the workloads restarted.
    pub async fn restart(
        &self,
        client: &Client,
        pods: &[Arc<PartialObjectMeta<Pod>>],
        names: &[String],
    ) -> Result<Vec<Workload>, kube::Error> {
        let mut workloads = BTreeSet::new();
        for pod in pods.iter().filter(|p| names.contains(&p.name_any())) {
            let ns = pod.namespace().unwrap_or_default();
            let Some((kind, name)) = direct_owner(pod) else {
                continue;
            };
            let owner = match kind.as_str() {
                "ReplicaSet" => {
                    let rs = Api::<PartialObjectMeta<ReplicaSet>>::namespaced(client.clone(), &ns)
                        .get_opt(&name)
                        .await?;
                    rs.and_then(|rs| {
                        rs.owner_references()
                            .iter()
                            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                            .map(|o| ("Deployment".to_owned(), o.name.clone()))
                    })
                }
                "StatefulSet" | "DaemonSet" => Some((kind, name)),
                _ => None,
            };
            if let Some((kind, name)) = owner {
                workloads.insert((kind, ns, name));
            }
        }
        let mut restarted = Vec::new();
        for w in workloads.into_iter().filter(|w| self.due(w)).take(PER_PASS) {
            let now = jiff::Timestamp::now().to_string();
            let patch =
                json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
            let pp = PatchParams::default();
            let (kind, ns, name) = (&w.0, &w.1, &w.2);
            match kind.as_str() {
                "Deployment" => {
                    Api::<Deployment>::namespaced(client.clone(), ns)
                        .patch(name, &pp, &Patch::Merge(&patch))
                        .await?;
                }
                "StatefulSet" => {
                    Api::<StatefulSet>::namespaced(client.clone(), ns)
                        .patch(name, &pp, &Patch::Merge(&patch))
                        .await?;
                }
                _ => {
                    Api::<DaemonSet>::namespaced(client.clone(), ns)
                        .patch(name, &pp, &Patch::Merge(&patch))
                        .await?;
                }
            }
            tracing::info!(kind = %kind, namespace = %ns, name = %name, "restarted a workload whose pods lack the injection");
            self.mark(w.clone());
            restarted.push(w);
        }
        Ok(restarted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controlling_owner_is_found() {
        let pod: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "dp-abc", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "kong-dp-7d9f", "uid": "2", "controller": true}
            ]}
        }))
        .unwrap();
        assert_eq!(
            direct_owner(&pod),
            Some(("ReplicaSet".into(), "kong-dp-7d9f".into()))
        );
    }

    #[test]
    fn a_workload_is_restarted_at_most_once_per_gap() {
        let r = Rollouts::default();
        let w: Workload = ("Deployment".into(), "kong".into(), "kong-dp".into());
        assert!(r.due(&w));
        r.mark(w.clone());
        assert!(!r.due(&w));
    }
}

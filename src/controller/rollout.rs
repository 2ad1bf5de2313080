//! `spec.dataPlanes.rollout: true`: restart the workloads whose pods lack the current
//! injection, the way `kubectl rollout restart` does (a `kubectl.kubernetes.io/restartedAt`
//! annotation on the pod template), so their new pods are injected.
//!
//! A restart must never loop, and never make things worse:
//! - **Pacing lives on the workload** (the annotation [`PACING`]: policy, generation,
//!   restarts, last restart), so an operator restart or a change of leader does not
//!   forget it. A workload is restarted at most once per [`MIN_GAP`] and at most
//!   [`MAX_PER_GENERATION`] times per policy generation; then the operator gives up with a
//!   Warning Event that says why, until the policy changes.
//! - **Only when the injection can succeed**: the webhook serves in this replica, the pod
//!   would be injected (its Kong container is found, no selector conflict), and, in
//!   `exporter.mode: Operator`, the control-plane session is up: a data plane restarted
//!   while the control plane is down comes up from the fallback configuration or empty.
//!   Otherwise the restart is held, and the Event says what it waits for.
//! - At most [`PER_PASS`] workloads per reconcile.
//!
//! [`decide`] is the pure decision; [`Rollouts::restart`] the shell around it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::FallbackConfigPolicy;
use crate::inject::{self, SecretFacts};

/// The annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// The workload annotation that keeps the pacing (JSON of [`Pacing`]).
pub const PACING: &str = "fallback.kong-dp.io/rollout";
/// The least time between two restarts of one workload.
pub const MIN_GAP: Duration = Duration::from_secs(600);
/// The most restarts of one workload for one policy generation.
pub const MAX_PER_GENERATION: u32 = 3;
/// The most workloads restarted by one reconcile.
pub const PER_PASS: usize = 3;

/// A workload that owns pods: (kind, namespace, name).
pub type Workload = (String, String, String);

/// What the operator did to a workload, kept on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    /// The policy's UID and generation the restarts were for.
    pub policy: String,
    pub generation: i64,
    pub restarts: u32,
    pub last: Timestamp,
    /// Set once the operator gave up on this generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gave_up: bool,
}

/// What to do with one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart it, and record this.
    Restart(Pacing),
    /// Nothing now (within the gap, or already given up).
    Wait,
    /// Not now: the injection could not succeed yet.
    Hold(String),
    /// No more restarts for this generation: record this and say why.
    GiveUp(Pacing, String),
}

/// The decision for a workload with `current` pacing, for the policy `policy_uid` at
/// `generation`, at `now`; `blocked` says why an injection could not succeed now. Pure.
pub fn decide(
    current: Option<&Pacing>,
    policy_uid: &str,
    generation: i64,
    now: Timestamp,
    blocked: Option<&str>,
) -> Decision {
    let same = current.filter(|p| p.policy == policy_uid && p.generation == generation);
    if same.is_some_and(|p| p.gave_up) {
        return Decision::Wait;
    }
    if let Some(why) = blocked {
        return Decision::Hold(why.to_owned());
    }
    let restarts = same.map_or(0, |p| p.restarts);
    // NB: the gap holds across generations too: a policy edited every minute must not
    // restart a workload every minute.
    if let Some(p) = current {
        let since = now.duration_since(p.last);
        if since < jiff::SignedDuration::try_from(MIN_GAP).unwrap_or_default() {
            return Decision::Wait;
        }
    }
    if restarts >= MAX_PER_GENERATION {
        let why = format!(
            "restarted {restarts} times for generation {generation} of the policy and its pods still lack the injection; check the webhook (its registration, failurePolicy and the apiserver's reach to it) and the admission warnings. No more restarts until the policy changes"
        );
        return Decision::GiveUp(
            Pacing {
                policy: policy_uid.to_owned(),
                generation,
                restarts,
                last: same.map_or(now, |p| p.last),
                gave_up: true,
            },
            why,
        );
    }
    Decision::Restart(Pacing {
        policy: policy_uid.to_owned(),
        generation,
        restarts: restarts + 1,
        last: now,
        gave_up: false,
    })
}

/// The owner of a pod as far as its metadata tells: a ReplicaSet is resolved to its
/// Deployment by the caller.
pub fn direct_owner(pod: &PartialObjectMeta<Pod>) -> Option<(String, String)> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// What happened to a workload in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Restarted,
    /// Held back; said once per reason.
    Held(String),
    GaveUp(String),
}

/// What the caller knows that decides whether an injection can succeed now.
pub struct Conditions<'a> {
    /// The webhook serves in this replica (`None`: why not).
    pub webhook: Result<(), String>,
    /// `exporter.mode: Operator`: why the control-plane session is not up, if it is not.
    pub control_plane: Option<String>,
    /// Every policy in scope and what is known of their Secrets, for the injection dry run.
    pub policies: &'a [FallbackConfigPolicy],
    pub secrets: &'a SecretFacts,
}

/// The last reason each workload was held for, so a hold is said once.
#[derive(Default)]
pub struct Rollouts {
    held: Mutex<HashMap<Workload, String>>,
}

impl Rollouts {
    /// Restarts the workloads of `pods` listed in `names` (those without a current
    /// injection) as [`decide`] says; what happened to each workload it looked at.
    pub async fn restart(
        &self,
        client: &Client,
        policy: &FallbackConfigPolicy,
        pods: &[Arc<PartialObjectMeta<Pod>>],
        names: &[String],
        conditions: &Conditions<'_>,
    ) -> Result<Vec<(Workload, Outcome)>, kube::Error> {
        match self
            .restart_inner(client, policy, pods, names, conditions)
            .await
        {
            // NB: the chart grants rollouts only with rbac.rollout=true: say so, once.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                let why = format!(
                    "the operator may not restart workloads ({}): install it with the chart value rbac.rollout=true, or restart the pods yourself",
                    e.message
                );
                let w: Workload = ("Workloads".into(), String::new(), "of this policy".into());
                let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                if held.get(&w) == Some(&why) {
                    return Ok(Vec::new());
                }
                held.insert(w.clone(), why.clone());
                Ok(vec![(w, Outcome::Held(why))])
            }
            other => other,
        }
    }

    async fn restart_inner(
        &self,
        client: &Client,
        policy: &FallbackConfigPolicy,
        pods: &[Arc<PartialObjectMeta<Pod>>],
        names: &[String],
        conditions: &Conditions<'_>,
    ) -> Result<Vec<(Workload, Outcome)>, kube::Error> {
        // One pod per workload: the one the injection dry run looks at.
        let mut workloads: BTreeMap<Workload, String> = BTreeMap::new();
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
                workloads.entry((kind, ns, name)).or_insert(pod.name_any());
            }
        }
        let uid = policy.uid().unwrap_or_default();
        let generation = policy.metadata.generation.unwrap_or(0);
        let mut out = Vec::new();
        for (w, pod) in workloads {
            if out.iter().filter(|(_, o)| *o == Outcome::Restarted).count() >= PER_PASS {
                break;
            }
            let current = pacing_of(client, &w).await?;
            let blocked = blocked(client, &w.1, &pod, conditions).await?;
            match decide(
                current.as_ref(),
                &uid,
                generation,
                Timestamp::now(),
                blocked.as_deref(),
            ) {
                Decision::Wait => {}
                Decision::Hold(why) => {
                    let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                    if held.get(&w) != Some(&why) {
                        held.insert(w.clone(), why.clone());
                        out.push((w, Outcome::Held(why)));
                    }
                }
                Decision::GiveUp(pacing, why) => {
                    patch(client, &w, &pacing, false).await?;
                    out.push((w, Outcome::GaveUp(why)));
                }
                Decision::Restart(pacing) => {
                    patch(client, &w, &pacing, true).await?;
                    self.held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&w);
                    tracing::info!(kind = %w.0, namespace = %w.1, name = %w.2, restarts = pacing.restarts, "restarted a workload whose pods lack the injection");
                    out.push((w, Outcome::Restarted));
                }
            }
        }
        Ok(out)
    }
}

/// Why the injection of `pod` could not succeed now, if it could not.
async fn blocked(
    client: &Client,
    ns: &str,
    pod: &str,
    c: &Conditions<'_>,
) -> Result<Option<String>, kube::Error> {
    if let Err(why) = &c.webhook {
        return Ok(Some(why.clone()));
    }
    if let Some(why) = &c.control_plane {
        return Ok(Some(format!(
            "the control-plane session is down ({why}): a data plane restarted now would start without it"
        )));
    }
    // The dry run: what the webhook would do with this pod's spec.
    let Some(full) = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(pod)
        .await?
    else {
        return Ok(None);
    };
    let mut fresh = full.clone();
    if let Some(a) = fresh.metadata.annotations.as_mut() {
        a.remove(inject::ANNOTATION);
    }
    let outcome = inject::inject(&fresh, c.policies, c.secrets);
    if outcome.injected.is_none() {
        let why = outcome
            .remarks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(Some(format!(
            "pod {pod} would not be injected: {}",
            if why.is_empty() {
                "no policy claims it"
            } else {
                why.as_str()
            }
        )));
    }
    Ok(None)
}

async fn pacing_of(client: &Client, w: &Workload) -> Result<Option<Pacing>, kube::Error> {
    let (kind, ns, name) = (w.0.as_str(), w.1.as_str(), w.2.as_str());
    let meta = match kind {
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_metadata_opt(name)
            .await?
            .map(|m| m.metadata),
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_metadata_opt(name)
            .await?
            .map(|m| m.metadata),
        _ => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get_metadata_opt(name)
            .await?
            .map(|m| m.metadata),
    };
    Ok(meta
        .and_then(|m| m.annotations)
        .and_then(|a| serde_json::from_str(a.get(PACING)?).ok()))
}

/// Records `pacing` on the workload and, with `restart`, restarts it, in one patch.
async fn patch(
    client: &Client,
    w: &Workload,
    pacing: &Pacing,
    restart: bool,
) -> Result<(), kube::Error> {
    let record = serde_json::to_string(pacing).unwrap_or_default();
    let body = if restart {
        json!({
            "metadata": {"annotations": {PACING: record}},
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: pacing.last.to_string()}}}}
        })
    } else {
        json!({"metadata": {"annotations": {PACING: record}}})
    };
    let pp = PatchParams::default();
    let (kind, ns, name) = (w.0.as_str(), w.1.as_str(), w.2.as_str());
    match kind {
        "Deployment" => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(&body))
                .await?;
        }
        "StatefulSet" => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(&body))
                .await?;
        }
        _ => {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(&body))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

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
    fn restarts_are_paced_capped_per_generation_and_then_given_up_once() {
        let gap = MIN_GAP.as_secs() as i64;
        let Decision::Restart(first) = decide(None, "uid", 3, t(0), None) else {
            panic!()
        };
        assert_eq!((first.restarts, first.last), (1, t(0)));
        assert_eq!(
            decide(Some(&first), "uid", 3, t(gap - 1), None),
            Decision::Wait
        );
        let mut p = first;
        for n in 2..=MAX_PER_GENERATION {
            let Decision::Restart(next) = decide(
                Some(&p),
                "uid",
                3,
                p.last + jiff::SignedDuration::from_secs(gap),
                None,
            ) else {
                panic!("restart {n}")
            };
            assert_eq!(next.restarts, n);
            p = next;
        }
        let later = p.last + jiff::SignedDuration::from_secs(gap);
        let Decision::GiveUp(done, why) = decide(Some(&p), "uid", 3, later, None) else {
            panic!()
        };
        assert!(done.gave_up && why.contains("generation 3"), "{why}");
        // Given up: silent until the policy changes.
        assert_eq!(
            decide(
                Some(&done),
                "uid",
                3,
                later + jiff::SignedDuration::from_secs(10 * gap),
                None
            ),
            Decision::Wait
        );
        let Decision::Restart(again) = decide(
            Some(&done),
            "uid",
            4,
            later + jiff::SignedDuration::from_secs(gap),
            None,
        ) else {
            panic!("a new generation starts over")
        };
        assert_eq!(again.restarts, 1);
    }

    #[test]
    fn a_restart_that_cannot_help_is_held_not_counted() {
        let held = decide(None, "uid", 1, t(0), Some("the webhook does not serve"));
        assert_eq!(held, Decision::Hold("the webhook does not serve".into()));
    }

    #[test]
    fn the_gap_holds_across_policy_generations() {
        let Decision::Restart(p) = decide(None, "uid", 1, t(0), None) else {
            panic!()
        };
        assert_eq!(decide(Some(&p), "uid", 2, t(60), None), Decision::Wait);
    }

    #[test]
    fn pacing_round_trips_through_its_annotation() {
        let p = Pacing {
            policy: "uid".into(),
            generation: 2,
            restarts: 1,
            last: t(5),
            gave_up: false,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(!text.contains("gaveUp"), "{text}");
        assert_eq!(serde_json::from_str::<Pacing>(&text).unwrap(), p);
    }
}

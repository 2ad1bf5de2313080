//! One Lease elector per policy (see [`crate::election`]): started by the reconciler,
//! restarted when the timings change, stopped (releasing the Lease) when the policy goes
//! or the operator shuts down. A change of leadership re-triggers the policy's reconcile,
//! so the new leader writes status at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::plan::PolicyKey;
use crate::api::FallbackConfigPolicy;
use crate::election::Gate;
use crate::election::lease::{self, Elector, Timings};
use crate::metrics::Metrics;

struct Running {
    /// The UID of the policy object this elector serves: a policy deleted and recreated
    /// under the same name (`kubectl replace --force`, Argo CD's Replace) is another
    /// object, with another owner for the Lease.
    uid: String,
    timings: Timings,
    gate: Gate,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The electors of every policy this replica knows.
pub struct Electors {
    client: Client,
    /// The Lease holder identity: the pod name plus a per-process suffix, so a restarted
    /// pod with the same name is a new candidate (client-go does the same).
    holder: String,
    trigger: mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
    metrics: Arc<Metrics>,
    running: Mutex<HashMap<PolicyKey, Running>>,
    /// The one watch of the Leases, waking their electors.
    watch: lease::LeaseWatch,
}

impl Electors {
    /// Electors for the policies of `namespace` (`None`: all namespaces).
    pub fn new(
        client: Client,
        namespace: Option<&str>,
        identity: &str,
        trigger: mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let leases: Api<Lease> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        Electors {
            watch: lease::LeaseWatch::start(leases),
            client,
            holder: format!("{identity}_{}", process_suffix()),
            trigger,
            metrics,
            running: Mutex::default(),
        }
    }

    /// This replica's holder identity.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PolicyKey, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy's gate, starting (or restarting, on new timings) its elector.
    pub fn ensure(&self, policy: &FallbackConfigPolicy, timings: Timings) -> Gate {
        let key = (policy.namespace().unwrap_or_default(), policy.name_any());
        let uid = policy.uid().unwrap_or_default();
        if let Some(r) = self.lock().get(&key)
            && !restart(&r.uid, &r.timings, r.task.is_finished(), &uid, &timings)
        {
            return r.gate.clone();
        }
        self.stop(&key);
        let (gate, control) = Gate::new();
        let (stop, stop_rx) = watch::channel(false);
        let elector = Elector {
            api: Api::<Lease>::namespaced(self.client.clone(), &key.0),
            name: key.1.clone(),
            identity: self.holder.clone(),
            timings,
            owner: policy.controller_owner_ref(&()),
        };
        let changed = {
            let gate = gate.clone();
            let metrics = self.metrics.clone();
            let trigger = self.trigger.clone();
            let key = key.clone();
            move || {
                let leading = gate.claim().leading(Instant::now());
                metrics.leading(&key.0, &key.1, leading);
                let _ = trigger.send(ObjectRef::new(&key.1).within(&key.0));
            }
        };
        let wakes = self.watch.register(&key.0, &key.1);
        let task = tokio::spawn(lease::run(elector, control, changed, wakes, stop_rx));
        self.lock().insert(
            key,
            Running {
                uid,
                timings,
                gate: gate.clone(),
                stop,
                task,
            },
        );
        gate
    }

    /// The policies with electors.
    pub fn keys(&self) -> Vec<PolicyKey> {
        self.lock().keys().cloned().collect()
    }

    /// Stops `key`'s elector; it releases the Lease if it holds it.
    pub fn stop(&self, key: &PolicyKey) {
        self.watch.forget(&key.0, &key.1);
        if let Some(r) = self.lock().remove(key) {
            let _ = r.stop.send(true);
            self.metrics.forget_policy(&key.0, &key.1);
        }
    }

    /// Stops `key`'s elector and waits (up to `limit`) for its release.
    pub async fn stop_and_wait(&self, key: &PolicyKey, limit: Duration) {
        self.watch.forget(&key.0, &key.1);
        let running = self.lock().remove(key);
        if let Some(r) = running {
            let _ = r.stop.send(true);
            self.metrics.forget_policy(&key.0, &key.1);
            let _ = tokio::time::timeout(limit, r.task).await;
        }
    }

    /// Stops every elector and waits (bounded) for their releases.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            let _ = tokio::time::timeout(Duration::from_secs(10), r.task).await;
        }
    }
}

/// Whether a running elector (for the policy object `uid`, with `timings`) must be replaced
/// to serve the policy object `want_uid` with `want`: another object under the same name,
/// new timings, or an elector that ended. Pure.
fn restart(uid: &str, timings: &Timings, finished: bool, want_uid: &str, want: &Timings) -> bool {
    finished || uid != want_uid || timings != want
}

/// Six hex digits that differ between processes.
fn process_suffix() -> String {
    use md5::{Digest, Md5};
    let seed = format!("{}/{:?}", std::process::id(), std::time::SystemTime::now());
    let d = Md5::digest(seed.as_bytes());
    d.iter().take(3).map(|b| format!("{b:02x}")).collect()
}

/// The timings of `policy`, client-go's defaults where its spec is unusable.
pub fn timings(policy: &FallbackConfigPolicy, valid: bool) -> Timings {
    if !valid {
        return Timings::default();
    }
    let e = &policy.spec.election;
    Timings {
        lease_duration: e.lease_duration.into(),
        renew_deadline: e.renew_deadline.into(),
        retry_period: e.retry_period.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_recreated_under_the_same_name_gets_a_new_elector() {
        let t = Timings::default();
        assert!(
            !restart("uid-1", &t, false, "uid-1", &t),
            "same object, same timings"
        );
        assert!(
            restart("uid-1", &t, false, "uid-2", &t),
            "deleted and recreated"
        );
        assert!(restart("uid-1", &t, true, "uid-1", &t), "the elector ended");
        let longer = Timings {
            lease_duration: Duration::from_secs(30),
            ..Timings::default()
        };
        assert!(restart("uid-1", &t, false, "uid-1", &longer), "new timings");
    }
}

//! The operator's own exporters (`exporter.mode: Operator`): one control-plane session and
//! one export loop per (policy, Kong version), started when a policy's inputs are ready
//! and restarted when they change (spec, versions, Secrets), stopped when it goes away.
//! Their reports land in a shared map that the reconciler turns into status, and each
//! report triggers a reconcile of its policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::backup::BackupPlan;
use super::plan::{Plan, PolicyKey};
use crate::api::FallbackConfigPolicy;
use crate::cp_client::{self, ClientSettings};
use crate::election::Gate;
use crate::election::mirror::{Flavor, Mirror};
use crate::export::runner::{self, ExportTarget, Report};
use crate::metrics::{ExportLabels, Metrics};
use crate::storage;

/// The last export of one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportRecord {
    pub key: String,
    pub hash: String,
    pub bytes: u64,
    pub at: SystemTime,
}

/// What one version's exporter last reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VersionState {
    pub connected: bool,
    /// Connected, but the control plane withholds its configuration.
    pub withheld: bool,
    /// Why the control-plane session is down: (label, message).
    pub session_error: Option<(String, String)>,
    /// Why the last write failed: (label, message); cleared by the next success.
    pub export_error: Option<(String, String)>,
    pub last_export: Option<ExportRecord>,
    /// When the oldest configuration not yet stored arrived; `None` when everything
    /// received is stored (or was skipped).
    pub waiting_since: Option<SystemTime>,
}

/// The Kong node id (UUID form) of a policy's exports of one version: derived from the
/// policy's UID, so every replica and every rollout of the operator is the same "data
/// plane" to the control plane, whose data-plane list and Kong Manager no longer grow with
/// each restart. Two sessions with one node id are accepted: Kong's CP keys its sessions by
/// websocket and upserts the `clustering_data_planes` row by node id, last ping wins
/// (`kong/clustering/control_plane.lua`).
pub fn node_id(policy_uid: &str, version: &str) -> String {
    use md5::{Digest, Md5};
    let d = Md5::digest(format!("{policy_uid}/{version}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

struct Running {
    fingerprint: u64,
    gate: Gate,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The running exporters of every policy.
pub struct Exporters {
    running: Mutex<HashMap<PolicyKey, Running>>,
    states: Arc<Mutex<HashMap<PolicyKey, BTreeMap<String, VersionState>>>>,
    /// Whether each policy's store enforces conditional writes (see
    /// [`storage::enforces_preconditions`]); absent until the leader has checked.
    fencing: Arc<Mutex<HashMap<PolicyKey, bool>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
    identity: String,
    metrics: Arc<Metrics>,
}

impl Exporters {
    pub fn new(
        identity: String,
        trigger: mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Exporters {
            running: Mutex::default(),
            states: Arc::default(),
            fencing: Arc::default(),
            trigger,
            identity,
            metrics,
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<PolicyKey, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policies with running exporters.
    pub fn keys(&self) -> Vec<PolicyKey> {
        self.lock_running().keys().cloned().collect()
    }

    /// The reported state of each version of `key`.
    pub fn states(&self, key: &PolicyKey) -> BTreeMap<String, VersionState> {
        self.states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether `key`'s store enforces conditional writes, once the leader has checked.
    pub fn fencing(&self, key: &PolicyKey) -> Option<bool> {
        self.fencing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Stops every exporter and waits (bounded) for them: the mirrors remove their
    /// registrations on the way out.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.lock_running().drain().map(|(_, r)| r).collect();
        for r in &all {
            let _ = r.stop.send(true);
        }
        for task in all.into_iter().flat_map(|r| r.tasks) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
    }

    /// Stops `key`'s exporters and waits (up to `limit`) for them to end.
    pub async fn stop_and_wait(&self, key: &PolicyKey, limit: std::time::Duration) {
        let running = self.lock_running().remove(key);
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let all = futures::future::join_all(r.tasks);
            let _ = tokio::time::timeout(limit, all).await;
        }
        self.stop(key);
    }

    /// Stops `key`'s exporters (the policy was deleted or no longer exports itself).
    pub fn stop(&self, key: &PolicyKey) {
        if let Some(r) = self.lock_running().remove(key) {
            let _ = r.stop.send(true);
            info!(namespace = %key.0, policy = %key.1, "stopped the exporters");
        }
        self.fencing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        let stopped = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        for version in stopped.into_iter().flat_map(|m| m.into_keys()) {
            self.metrics.forget(&labels(key, &version));
        }
    }

    /// `mode: BackupPods`: mirrors each designated backup pod's node id under its own
    /// version's prefix, behind `gate`, unless the same plan already runs. No control-plane
    /// session: the backup pods export themselves.
    pub async fn ensure_mirrors(
        &self,
        key: &PolicyKey,
        plan: BackupPlan,
        gate: &Gate,
    ) -> Result<(), String> {
        if self
            .lock_running()
            .get(key)
            .is_some_and(|r| r.fingerprint == plan.fingerprint && r.gate.same(gate))
        {
            return Ok(());
        }
        self.stop(key);
        let store: Arc<dyn storage::ObjectStore> =
            Arc::from(storage::open(&plan.url, plan.access.clone()).await?);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = plan
            .designation
            .designated
            .iter()
            .map(|d| {
                let mirror = Mirror {
                    store: store.clone(),
                    flavor: Flavor::of(&plan.url),
                    url: plan.url.clone(),
                    version: d.version.clone(),
                    node_id: d.node_id.clone(),
                };
                tokio::spawn(mirror.run(gate.clone(), stop_rx.clone()))
            })
            .collect();
        info!(namespace = %key.0, policy = %key.1, designated = ?plan.designation.designated, uncovered = ?plan.designation.uncovered, "mirroring the designated backup pods");
        self.lock_running().insert(
            key.clone(),
            Running {
                fingerprint: plan.fingerprint,
                gate: gate.clone(),
                stop,
                tasks,
            },
        );
        Ok(())
    }

    /// Starts `plan` for `key`, writing behind `gate`, unless the same plan already runs.
    pub async fn ensure(&self, key: &PolicyKey, plan: Plan, gate: &Gate) -> Result<(), String> {
        if self
            .lock_running()
            .get(key)
            .is_some_and(|r| r.fingerprint == plan.fingerprint && r.gate.same(gate))
        {
            return Ok(());
        }
        self.stop(key);
        let store: Arc<dyn storage::ObjectStore> =
            Arc::from(storage::open(&plan.url, plan.access.clone()).await?);
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        {
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            let entry = states.entry(key.clone()).or_default();
            *entry = plan
                .versions
                .iter()
                .map(|v| (v.clone(), VersionState::default()))
                .collect();
        }
        tasks.push(tokio::spawn(check_fencing(
            store.clone(),
            format!("{}/.kong-fallback-operator/fencing-probe", plan.url.prefix),
            gate.clone(),
            self.fencing.clone(),
            key.clone(),
            self.trigger.clone(),
            stop_rx.clone(),
        )));
        for version in &plan.versions {
            let parsed = version
                .parse()
                .map_err(|e: crate::kong::KongVersionError| e.to_string())?;
            let mut client = plan.client.clone();
            client.node_id = node_id(&plan.policy_uid, version);
            if plan.mirror {
                let mirror = Mirror {
                    store: store.clone(),
                    flavor: Flavor::of(&plan.url),
                    url: plan.url.clone(),
                    version: version.clone(),
                    node_id: client.node_id.clone(),
                };
                tasks.push(tokio::spawn(mirror.run(gate.clone(), stop_rx.clone())));
            }
            client.plugins = cp_client::plugins::announced(
                &parsed,
                &plan.custom_plugins,
                plan.dp_plugins.get(version),
            );
            client.version = parsed;
            let target = ExportTarget {
                url: plan.url.clone(),
                version: version.clone(),
                uploader: client.node_id.clone(),
                writer: self.identity.clone(),
                owner: format!("{}/{}", key.0, key.1),
                plugins: Some(client.plugins.clone()),
                min_interval: plan.min_interval,
                history_limit: plan.history_limit,
            };
            // NB: one event in flight: with the runner's pending snapshot and the one being
            // decoded, at most three configurations of a version are in memory.
            let (ev_tx, ev_rx) = mpsc::channel(1);
            let (rep_tx, mut rep_rx) = mpsc::channel(64);
            match plan.standby {
                crate::api::Standby::Warm => {
                    tokio::spawn(cp_client::run(client, ev_tx, stop_rx.clone()));
                }
                crate::api::Standby::Cold => {
                    tasks.push(tokio::spawn(session_while_leading(
                        client,
                        ev_tx,
                        gate.clone(),
                        stop_rx.clone(),
                    )));
                }
            }
            tasks.push(tokio::spawn(runner::run(
                target,
                store.clone(),
                ev_rx,
                rep_tx,
                gate.clone(),
                stop_rx.clone(),
            )));
            let states = self.states.clone();
            let trigger = self.trigger.clone();
            let metrics = self.metrics.clone();
            let labels = labels(key, version);
            let (key, version) = (key.clone(), version.clone());
            let obj = ObjectRef::new(&key.1).within(&key.0);
            tokio::spawn(async move {
                while let Some(report) = rep_rx.recv().await {
                    let changed = {
                        let mut all = states.lock().unwrap_or_else(|e| e.into_inner());
                        let Some(s) = all.get_mut(&key).and_then(|m| m.get_mut(&version)) else {
                            return;
                        };
                        // NB: inside the lock, so a report racing `stop` cannot revive the series.
                        if let Some(event) = report.metric() {
                            metrics.observe(&labels, event);
                        }
                        let before = s.clone();
                        apply(s, report);
                        *s != before
                    };
                    if changed {
                        let _ = trigger.send(obj.clone());
                    }
                }
            });
        }
        info!(namespace = %key.0, policy = %key.1, versions = ?plan.versions, "started the exporters");
        self.lock_running().insert(
            key.clone(),
            Running {
                fingerprint: plan.fingerprint,
                gate: gate.clone(),
                stop,
                tasks,
            },
        );
        Ok(())
    }
}

/// `standby: Cold`: a control-plane session only while this replica leads.
async fn session_while_leading(
    client: ClientSettings,
    events: mpsc::Sender<cp_client::Event>,
    mut gate: Gate,
    mut stop: watch::Receiver<bool>,
) {
    // NB: the claim also lapses by time alone (renew deadline): look again now and then.
    let look_again = std::time::Duration::from_millis(500);
    let leading = |gate: &Gate| gate.claim().leading(std::time::Instant::now());
    loop {
        while !leading(&gate) {
            tokio::select! {
                _ = gate.changed() => {}
                _ = tokio::time::sleep(look_again) => {}
                _ = stop.changed() => return,
            }
        }
        let (end, ended) = watch::channel(false);
        let session = tokio::spawn(cp_client::run(client.clone(), events.clone(), ended));
        let stopping = loop {
            tokio::select! {
                _ = gate.changed() => {}
                _ = tokio::time::sleep(look_again) => {}
                _ = stop.changed() => break true,
            }
            if !leading(&gate) {
                break false;
            }
        };
        let _ = end.send(true);
        let _ = session.await;
        if stopping {
            return;
        }
    }
}

/// Once this replica leads (a store write, so behind the gate like every other), checks
/// that the store enforces conditional writes and records the answer for status.
async fn check_fencing(
    store: Arc<dyn storage::ObjectStore>,
    probe_key: String,
    mut gate: Gate,
    results: Arc<Mutex<HashMap<PolicyKey, bool>>>,
    key: PolicyKey,
    trigger: mpsc::UnboundedSender<ObjectRef<FallbackConfigPolicy>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if let Some(permit) = gate.permit() {
            let outcome = storage::enforces_preconditions(store.as_ref(), &probe_key).await;
            drop(permit);
            match outcome {
                Ok(enforced) => {
                    if !enforced {
                        warn!(namespace = %key.0, policy = %key.1, bucket = %store.bucket(), "the store ignores conditional writes: fencing is off");
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.clone(), enforced);
                    let _ = trigger.send(ObjectRef::new(&key.1).within(&key.0));
                    return;
                }
                Err(e) => {
                    failures += 1;
                    debug!(namespace = %key.0, policy = %key.1, error = %e, "cannot check the store's conditional writes yet");
                }
            }
        }
        let retry = crate::export::backoff(failures.max(1));
        tokio::select! {
            _ = gate.changed() => {}
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => return,
        }
    }
}

fn labels(key: &PolicyKey, version: &str) -> ExportLabels {
    ExportLabels {
        namespace: key.0.clone(),
        policy: key.1.clone(),
        version: version.to_owned(),
    }
}

/// Folds one report into a version's state. Pure.
pub fn apply(s: &mut VersionState, report: Report) {
    match report {
        Report::Connected => {
            s.connected = true;
            s.withheld = false;
            s.session_error = None;
        }
        Report::NoConfig => s.withheld = true,
        Report::Disconnected { reason, label } => {
            s.connected = false;
            s.session_error = Some((label.to_owned(), reason));
        }
        Report::Rejected { reason, label } => {
            warn!(reason = %reason, "a configuration frame was refused");
            s.session_error = Some((label.to_owned(), reason));
        }
        Report::Received { .. } => {
            s.withheld = false;
            s.waiting_since.get_or_insert_with(SystemTime::now);
        }
        Report::Skipped { .. } => s.withheld = false,
        Report::Refused { reason, .. } => {
            s.withheld = false;
            // NB: the configuration will not be stored: the stall clock does not run for it.
            s.waiting_since = None;
            s.export_error = Some(("PluginMissing".to_owned(), reason));
        }
        Report::Exported {
            key,
            hash,
            bytes,
            at,
            ..
        } => {
            s.withheld = false;
            s.export_error = None;
            s.waiting_since = None;
            s.last_export = Some(ExportRecord {
                key,
                hash,
                bytes,
                at,
            });
        }
        Report::Failed { error, .. } => {
            s.export_error = Some((error.kind.label().to_owned(), error.to_string()));
        }
        Report::Stored {
            key,
            hash,
            bytes,
            at,
        } => {
            s.export_error = None;
            s.waiting_since = None;
            s.last_export = Some(ExportRecord {
                key,
                hash,
                bytes,
                at,
            });
        }
        Report::Fenced { .. } | Report::History { .. } => {}
        Report::Foreign { owner, key } => {
            s.export_error = Some((
                "SharedPrefix".to_owned(),
                format!(
                    "{key} was written by policy {owner}: two policies (or clusters) share this storage prefix, and the operator does not overwrite the other's configuration; give each policy its own prefix"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ErrorKind, StoreError};

    #[test]
    fn node_ids_are_stable_uuids_per_policy_object_and_version() {
        let a = node_id("6a1c3f0e-uid", "3.6.1.4");
        assert_eq!(
            a,
            node_id("6a1c3f0e-uid", "3.6.1.4"),
            "every replica, every rollout"
        );
        assert_ne!(a, node_id("another-uid", "3.6.1.4"));
        assert_ne!(a, node_id("6a1c3f0e-uid", "3.7.0.0"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn reports_fold_into_the_version_state() {
        let mut s = VersionState::default();
        apply(&mut s, Report::Connected);
        apply(&mut s, Report::NoConfig);
        assert!(s.connected && s.withheld);
        let error = StoreError {
            kind: ErrorKind::Credentials,
            op: "put",
            bucket: "b".into(),
            key: "k".into(),
            detail: "AccessDenied".into(),
        };
        apply(
            &mut s,
            Report::Failed {
                error,
                retry_in: std::time::Duration::from_secs(1),
            },
        );
        assert_eq!(
            s.export_error.as_ref().map(|e| e.0.as_str()),
            Some("Credentials")
        );
        apply(
            &mut s,
            Report::Exported {
                key: "k".into(),
                hash: "h".into(),
                bytes: 3,
                at: SystemTime::UNIX_EPOCH,
                latency: Default::default(),
                stages: Default::default(),
            },
        );
        assert!(s.export_error.is_none() && !s.withheld);
        apply(
            &mut s,
            Report::Disconnected {
                reason: "closed".into(),
                label: "Closed",
            },
        );
        assert!(!s.connected);
        assert_eq!(s.last_export.as_ref().map(|e| e.hash.as_str()), Some("h"));
    }
}

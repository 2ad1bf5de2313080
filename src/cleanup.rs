//! Uninstall (`kong-fallback-operator cleanup`): releases what the operator holds on each
//! `FallbackConfigPolicy`, so that the policies, and the namespaces they live in, can be
//! deleted once the operator is gone instead of hanging on its finalizer.
//!
//! Per policy, the same work as the controller's finalizer: the mirror's `election/`
//! registrations leave the store (bounded: a store that cannot be reached only warns; a
//! registration left behind goes stale by itself), the policy's Lease is deleted, and
//! [`FINALIZER`] is removed, other finalizers kept. Before that, if asked: the operator's
//! Deployment is scaled to zero and its pods waited for (a running operator adds its
//! finalizer back at once), and its MutatingWebhookConfiguration is deleted.
//!
//! The decisions ([`remaining_finalizers`], [`mirrored_nodes`]) are pure; [`run`] is the
//! shell. It never deletes a policy, never touches `config.json` or the history, and never
//! prints a secret value.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use crate::api::{ExporterMode, FallbackConfigPolicy};
use crate::controller::FINALIZER;
use crate::controller::exporters::node_id;
use crate::controller::plan::{selector_string, write_access};
use crate::controller::secrets::SecretReader;
use crate::election::mirror::{self, Flavor};
use crate::kong::StorageUrl;
use crate::storage::{self, Timeouts};

/// How many policies are cleaned at a time.
const CONCURRENCY: usize = 16;

/// What `cleanup` does besides the policies.
#[derive(Clone, Debug)]
pub struct Options {
    /// Only the policies of this namespace; `None`: all namespaces.
    pub namespace: Option<String>,
    /// `(namespace, name)` of the operator's Deployment to scale to zero first.
    pub stop_deployment: Option<(String, String)>,
    /// How long to wait for that Deployment's pods to go.
    pub stop_timeout: Duration,
    /// The MutatingWebhookConfiguration to delete.
    pub delete_webhook_configuration: Option<String>,
    /// The bound of one policy's store work (credentials, listing, deletes).
    pub store_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list the FallbackConfigPolicy objects{}: {source}", in_namespace(.namespace))]
    List {
        namespace: Option<String>,
        #[source]
        source: kube::Error,
    },
    #[error("{failed} Kubernetes API call(s) failed (each is named above); run cleanup again")]
    Incomplete { failed: usize },
}

fn in_namespace(ns: &Option<String>) -> String {
    ns.as_ref()
        .map(|n| format!(" in namespace {n}"))
        .unwrap_or_default()
}

/// The finalizers to keep once ours goes, in their order; `None` when ours is not there
/// (nothing to write). Every copy of ours goes: one left would still block the deletion.
pub fn remaining_finalizers(finalizers: &[String]) -> Option<Vec<String>> {
    if !finalizers.iter().any(|f| f == FINALIZER) {
        return None;
    }
    Some(
        finalizers
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect(),
    )
}

/// The `(version, node id)` pairs the mirror may have registered for `policy`: in
/// `mode: Operator` (with `mirrorToStorage`) the operator's own node id of every version it
/// was told or has exported, and the backup pods its status says it designated. Pure.
pub fn mirrored_nodes(policy: &FallbackConfigPolicy) -> BTreeSet<(String, String)> {
    let spec = &policy.spec;
    let status = policy.status.as_ref();
    let mut nodes = BTreeSet::new();
    if spec.exporter.mode == ExporterMode::Operator
        && spec.election.mirror_to_storage
        && let Some(uid) = policy.uid()
    {
        let exported = status.into_iter().flat_map(|s| s.exports.iter());
        let versions: BTreeSet<&str> = spec
            .exporter
            .versions
            .iter()
            .map(String::as_str)
            .chain(exported.map(|e| e.version.as_str()))
            .collect();
        for v in versions {
            nodes.insert((v.to_owned(), node_id(&uid, v)));
        }
    }
    let designated = status
        .and_then(|s| s.leader.as_ref())
        .into_iter()
        .flat_map(|l| l.backup_pods.iter());
    for d in designated {
        nodes.insert((d.version.clone(), d.node_id.clone()));
    }
    nodes
}

/// Runs the cleanup, calling `say` with one line per step and per policy. Every policy is
/// tried; `Err` if an apiserver call failed (the line says which).
pub async fn run(
    client: &Client,
    options: &Options,
    mut say: impl FnMut(&str),
) -> Result<(), Error> {
    let mut failed = 0;
    if let Some(name) = &options.delete_webhook_configuration {
        // NB: first, so no pod waits on (or, with failurePolicy Fail, is refused by) a
        // webhook whose operator is going away. The operator cannot re-create it: its
        // ClusterRole has no `create` on it.
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        match api.delete(name, &Default::default()).await {
            Ok(_) => say(&format!("MutatingWebhookConfiguration {name}: deleted")),
            Err(e) if not_found(&e) => say(&format!(
                "MutatingWebhookConfiguration {name}: already gone"
            )),
            Err(e) => {
                failed += 1;
                say(&format!(
                    "MutatingWebhookConfiguration {name}: cannot delete: {e}"
                ));
            }
        }
    }
    if let Some((ns, name)) = &options.stop_deployment {
        match stop_deployment(client, ns, name, options.stop_timeout).await {
            Ok(line) => say(&format!("Deployment {ns}/{name}: {line}")),
            Err(e) => {
                failed += 1;
                say(&format!("Deployment {ns}/{name}: {e}"));
            }
        }
    }
    let policies: Api<FallbackConfigPolicy> = match &options.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = match policies.list(&ListParams::default()).await {
        Ok(list) => list,
        // NB: the CRD deleted first took every policy with it: nothing is left to release.
        Err(e) if not_found(&e) => {
            say("the FallbackConfigPolicy CRD is not installed: no policy to release");
            return finish(failed);
        }
        Err(source) => {
            return Err(Error::List {
                namespace: options.namespace.clone(),
                source,
            });
        }
    };
    if list.items.is_empty() {
        say(&format!(
            "no FallbackConfigPolicy{}",
            in_namespace(&options.namespace)
        ));
    }
    // NB: several at a time: each may wait `store_timeout` on a store that does not answer,
    // and `helm uninstall --timeout` bounds the whole hook.
    let mut cleaned = futures::stream::iter(&list.items)
        .map(|p| clean_policy(client, p, options.store_timeout))
        .buffered(CONCURRENCY);
    while let Some((line, failures)) = cleaned.next().await {
        failed += failures;
        say(&line);
    }
    finish(failed)
}

fn finish(failed: usize) -> Result<(), Error> {
    match failed {
        0 => Ok(()),
        failed => Err(Error::Incomplete { failed }),
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Scales the Deployment to zero and waits (up to `limit`) until none of its pods is left,
/// terminating ones included: a terminating replica still reconciles until it exits.
async fn stop_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    limit: Duration,
) -> Result<String, String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"spec": {"replicas": 0}});
    let deployment = match deployments
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(d) => d,
        Err(e) if not_found(&e) => return Ok("already gone".into()),
        Err(e) => return Err(format!("cannot scale to zero: {e}")),
    };
    let selector = selector_string(&deployment.spec.selector);
    if selector.is_empty() {
        return Ok("scaled to zero (no pod selector to wait on)".into());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&selector);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = pods
            .list(&lp)
            .await
            .map_err(|e| format!("scaled to zero, but cannot list its pods: {e}"))?
            .items
            .len();
        if left == 0 {
            return Ok("scaled to zero, no pod left".into());
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(namespace = %ns, deployment = %name, pods = left, "the operator's pods are still there; a running replica may add its finalizer back");
            return Ok(format!(
                "scaled to zero, but {left} pod(s) still there after {}s: a running replica may add its finalizer back",
                limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One policy: registrations, Lease, finalizer. The line, and how many apiserver calls
/// failed.
async fn clean_policy(
    client: &Client,
    policy: &FallbackConfigPolicy,
    store_timeout: Duration,
) -> (String, usize) {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let mut failed = 0;
    let store = remove_registrations(client, policy, store_timeout).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    // NB: a failure here does not keep the finalizer: the Lease is owned by the policy,
    // so the garbage collector removes it with the policy anyway.
    let lease = match leases.delete(&name, &Default::default()).await {
        Ok(_) => "Lease deleted".to_owned(),
        Err(e) if not_found(&e) => "no Lease".to_owned(),
        Err(e) => {
            failed += 1;
            format!("cannot delete the Lease: {e}")
        }
    };
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let finalizer = match remove_finalizer(&api, policy).await {
        Ok(outcome) => outcome.to_owned(),
        Err(e) => {
            failed += 1;
            format!("cannot remove the finalizer: {e}")
        }
    };
    (
        format!("{ns}/{name}: {store}; {lease}; {finalizer}"),
        failed,
    )
}

/// Removes [`FINALIZER`] from `policy` (as last read) with a JSON patch that first tests
/// the list it read, so a finalizer another controller adds meanwhile is never dropped; a
/// changed list is read again (three tries). Says what it did.
pub async fn remove_finalizer(
    api: &Api<FallbackConfigPolicy>,
    policy: &FallbackConfigPolicy,
) -> Result<&'static str, kube::Error> {
    let name = policy.name_any();
    let mut current = policy.finalizers().to_vec();
    let mut tries = 0;
    loop {
        let Some(remaining) = remaining_finalizers(&current) else {
            return Ok("no finalizer of ours");
        };
        let ops = serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]);
        let patch: json_patch::Patch =
            serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
        match api
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok("finalizer removed"),
            Err(e) if not_found(&e) => return Ok("policy already gone"),
            // 422: the test failed, the list changed; 409: a conflict.
            Err(kube::Error::Api(s)) if (s.code == 422 || s.code == 409) && tries < 2 => {
                tries += 1;
                match api.get_opt(&name).await? {
                    Some(p) => current = p.finalizers().to_vec(),
                    None => return Ok("policy already gone"),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes the mirror's registrations of `policy` from its store, within `limit`; says
/// what happened. Never fails the cleanup: without the write credentials, or with a store
/// that does not answer, the registrations stay and go stale by themselves.
async fn remove_registrations(
    client: &Client,
    policy: &FallbackConfigPolicy,
    limit: Duration,
) -> String {
    let nodes = mirrored_nodes(policy);
    if nodes.is_empty() {
        return "no registration to remove".into();
    }
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let url = match StorageUrl::parse(&policy.spec.storage.url) {
        Ok(u) => u,
        Err(e) => return format!("registrations left: {e}"),
    };
    let flavor = Flavor::of(&url);
    let work = async {
        let (access, _) = write_access(
            &SecretReader::direct(client.clone()),
            &ns,
            &policy.spec,
            &url,
        )
        .await
        .map_err(|(_, message)| message)?;
        // NB: not `call: limit`: with both bounds equal, a late runtime finds both due and
        // the inner one (polled first) won, so the report depended on the machine's load.
        // The whole is bounded by `limit` below; a call alone by the usual bound.
        let store = storage::open_with(&url, access, Timeouts::default()).await?;
        let mut removed = 0;
        for (version, node) in &nodes {
            removed += mirror::remove_mirrored(store.as_ref(), flavor, &url, version, node)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<usize, String>(removed)
    };
    let problem = match tokio::time::timeout(limit, work).await {
        Ok(Ok(removed)) => return format!("{removed} registration(s) removed from the store"),
        Ok(Err(message)) => message,
        Err(_) => format!("the store did not answer within {}s", limit.as_secs()),
    };
    warn!(namespace = %ns, policy = %name, problem = %problem, "registrations left in the store; they go stale by themselves");
    format!("registrations left ({problem}); they go stale by themselves")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_our_finalizer_goes_and_the_others_keep_their_order() {
        assert_eq!(
            remaining_finalizers(&strings(&["a.io/x", FINALIZER, "b.io/y"])),
            Some(strings(&["a.io/x", "b.io/y"]))
        );
        assert_eq!(
            remaining_finalizers(&strings(&[FINALIZER])),
            Some(Vec::new())
        );
        assert_eq!(
            remaining_finalizers(&strings(&[FINALIZER, "a.io/x", FINALIZER])),
            Some(strings(&["a.io/x"])),
            "every copy of ours"
        );
    }

    #[test]
    fn a_policy_without_our_finalizer_needs_no_write() {
        assert_eq!(remaining_finalizers(&[]), None);
        assert_eq!(
            remaining_finalizers(&strings(&["a.io/x", "fallback.kong-dp.io/other"])),
            None
        );
    }

    fn policy(spec: serde_json::Value, status: serde_json::Value) -> FallbackConfigPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "prod", "namespace": "kong", "uid": "uid-1"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn spec(mode: &str, mirror: bool) -> serde_json::Value {
        serde_json::json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://b/kong", "region": "r", "readCredentials": {"secretName": "read"},
                        "writeCredentials": {"secretName": "write"}},
            "exporter": {"mode": mode, "versions": ["3.6.1.4"],
                         "controlPlane": {"endpoint": "cp:8005", "clusterCertSecret": "cert"}},
            "election": {"mirrorToStorage": mirror}
        })
    }

    #[test]
    fn the_operators_node_ids_cover_told_and_exported_versions_and_designated_pods() {
        let status = serde_json::json!({
            "exports": [{"version": "3.7.0.0", "key": "k", "configHash": "h", "bytes": 1,
                         "time": "2026-01-01T00:00:00Z"}],
            "leader": {"identity": "kfo-0", "backupPods": [{"version": "3.5.0.0", "pod": "b", "nodeId": "pod-uid"}]}
        });
        let nodes = mirrored_nodes(&policy(spec("Operator", true), status.clone()));
        assert_eq!(
            nodes,
            BTreeSet::from([
                ("3.5.0.0".to_owned(), "pod-uid".to_owned()),
                ("3.6.1.4".to_owned(), node_id("uid-1", "3.6.1.4")),
                ("3.7.0.0".to_owned(), node_id("uid-1", "3.7.0.0")),
            ])
        );
        // Without the mirror, or in another mode, the operator registered no node of its own.
        for spec in [spec("Operator", false), spec("BackupPods", true)] {
            assert_eq!(
                mirrored_nodes(&policy(spec, status.clone())),
                BTreeSet::from([("3.5.0.0".to_owned(), "pod-uid".to_owned())])
            );
        }
        assert!(mirrored_nodes(&policy(spec("None", true), serde_json::json!({}))).is_empty());
    }
}

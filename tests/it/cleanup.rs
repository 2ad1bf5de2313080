//! Uninstall: `kong-fallback-operator cleanup`, the built binary, run on the real apiserver
//! as the chart's ServiceAccount (deploy/'s RBAC enforced), with no operator running,
//! releases the policies the operator left behind: registrations, Leases, finalizers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kfo_testenv::{kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller::FINALIZER;
use kong_fallback_operator::controller::exporters::node_id;
use kong_fallback_operator::election::mirror::{Flavor, registration_key};
use kong_fallback_operator::kong::StorageUrl;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, ResourceExt};
use serde_json::json;

use crate::wait::until;

async fn cleanup(kubeconfig: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .arg("cleanup")
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A kubeconfig like the admin's, authenticating as the chart's ServiceAccount.
async fn service_account_kubeconfig() -> PathBuf {
    let env = kube().await;
    let out = env
        .kubectl(&[
            "create",
            "token",
            crate::install::SA,
            "-n",
            crate::install::NS,
            "--duration=1h",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let admin = std::fs::read_to_string(env.kubeconfig_path()).unwrap();
    assert!(admin.contains(env.admin_token()));
    let path = std::env::temp_dir().join(format!("kfo-cleanup-sa-{}.yaml", std::process::id()));
    std::fs::write(&path, admin.replace(env.admin_token(), &token)).unwrap();
    path
}

async fn keys(bucket: &str) -> Vec<String> {
    let s3 = minio().await;
    let listed = s3
        .root_client()
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn cleanup_releases_the_policies_an_operator_left_so_their_namespace_can_go() {
    crate::install::install().await;
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let admin = env.client().await.unwrap();
    let pp = PostParams::default();
    let ns = env.namespace("cleanup").await.unwrap();
    let s3 = minio().await;
    let bucket = s3.bucket("cleanup").await.unwrap();

    let write: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fallback-write"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.root_user, "AWS_SECRET_ACCESS_KEY": s3.root_password}
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&pp, &write)
        .await
        .unwrap();
    // NB: the same key under a second name: one Secret for both is refused at admission.
    let mut read = write.clone();
    read.metadata.name = Some("fallback-read".into());
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&pp, &read)
        .await
        .unwrap();
    // A store that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let spec = |endpoint: &str, mode: &str| {
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": format!("s3://{bucket}/kong"), "endpoint": endpoint, "region": "us-east-1",
                        "readCredentials": {"secretName": "fallback-read"},
                        "writeCredentials": {"secretName": "fallback-write"}},
            "exporter": {"mode": mode, "versions": ["3.6.1.4"],
                         "controlPlane": {"endpoint": "kong-cp:8005", "clusterCertSecret": "kong-cluster-cert"}}
        })
    };
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(admin.clone(), &ns);
    let mut created = Vec::new();
    for (name, spec, finalizers) in [
        ("prod", spec(&s3.endpoint, "Operator"), vec![FINALIZER]),
        (
            "shared",
            spec(&s3.endpoint, "None"),
            vec![FINALIZER, "example.com/keep"],
        ),
        (
            "silent",
            spec(&silent_endpoint, "Operator"),
            vec![FINALIZER],
        ),
    ] {
        let mut p = crate::cluster::policy(name, spec);
        p.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        created.push(policies.create(&pp, &p).await.unwrap());
    }
    // What the operator left: prod's Lease, and its mirror's registration next to a native
    // node's and the exported configuration.
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "prod"},
        "spec": {"holderIdentity": "kong-fallback-operator-0_abc123", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    leases.create(&pp, &lease).await.unwrap();
    let url = StorageUrl::parse(&format!("s3://{bucket}/kong")).unwrap();
    let ours = registration_key(
        Flavor::S3,
        &url,
        "3.6.1.4",
        2,
        &node_id(&created[0].uid().unwrap(), "3.6.1.4"),
    );
    let native = format!(
        "{}1733649544.123-native-node",
        url.election_prefix("3.6.1.4")
    );
    let config = url.config_key("3.6.1.4");
    for key in [&ours, &native, &config] {
        s3.root_client()
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(Vec::new().into())
            .send()
            .await
            .unwrap();
    }
    // The operator's Deployment, still there, with a pod that never goes (no kubelet here).
    let op_ns = env.namespace("cleanup-op").await.unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kfo"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "kfo"}},
                 "template": {"metadata": {"labels": {"app": "kfo"}},
                              "spec": {"containers": [{"name": "operator", "image": "kfo"}]}}}
    }))
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &op_ns);
    deployments.create(&pp, &deployment).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kfo-0", "labels": {"app": "kfo"}},
        "spec": {"containers": [{"name": "operator", "image": "kfo"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), &op_ns)
        .create(&pp, &pod)
        .await
        .unwrap();
    // What the chart grants in its own namespace (`<release>-self`): patch of the operator's
    // own Deployment, by name, here for this stand-in.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "kfo-self"},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["kfo"], "verbs": ["patch"]}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), &op_ns)
        .create(&pp, &role)
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "kfo-self"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kfo-self"},
        "subjects": [{"kind": "ServiceAccount", "name": "kong-fallback-operator", "namespace": "kong-fallback-operator"}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), &op_ns)
        .create(&pp, &binding)
        .await
        .unwrap();

    // With no operator, a deleted policy stays Terminating, and so does its namespace.
    policies
        .delete("prod", &DeleteParams::default())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck = policies.get("prod").await.unwrap();
    assert!(stuck.metadata.deletion_timestamp.is_some());
    assert_eq!(stuck.finalizers(), [FINALIZER]);

    let as_sa = service_account_kubeconfig().await;
    let started = Instant::now();
    let out = cleanup(
        &as_sa,
        &[
            "--namespace",
            &ns,
            "--store-timeout",
            "3",
            "--stop-deployment",
            "kfo",
            "--operator-namespace",
            &op_ns,
            "--stop-timeout",
            "1",
        ],
    )
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an unreachable store held the cleanup up: {t}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("Deployment {op_ns}/kfo: scaled to zero, but 1 pod(s) still there after 1s"),
        format!(
            "{ns}/prod: 1 registration(s) removed from the store; Lease deleted; finalizer removed"
        ),
        format!("{ns}/shared: no registration to remove; no Lease; finalizer removed"),
        format!(
            "{ns}/silent: registrations left (the store did not answer within 3s); they go stale by themselves; no Lease; finalizer removed"
        ),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{t}");
    }
    assert!(!t.contains(&s3.root_password), "a secret leaked: {t}");

    // The deleted policy is gone with its Lease; the others stay, without our finalizer.
    assert!(policies.get_opt("prod").await.unwrap().is_none());
    assert!(leases.get_opt("prod").await.unwrap().is_none());
    assert_eq!(
        policies.get("shared").await.unwrap().finalizers(),
        ["example.com/keep"]
    );
    assert!(
        policies
            .get("silent")
            .await
            .unwrap()
            .finalizers()
            .is_empty()
    );
    // Only the mirror's registration left the store.
    let mut left = keys(&bucket).await;
    left.sort();
    let mut expected = vec![config.clone(), native.clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(deployments.get("kfo").await.unwrap().spec.replicas, Some(0));

    // A call the apiserver refuses fails the run: the ServiceAccount may delete only the
    // chart's own MutatingWebhookConfiguration (which the install test uses, so it is
    // asked, not deleted)...
    let out = cleanup(
        &as_sa,
        &[
            "--namespace",
            &ns,
            "--delete-webhook-configuration",
            "--webhook-configuration",
            "not-the-charts",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("MutatingWebhookConfiguration not-the-charts: cannot delete"),
        "{}",
        text(&out)
    );
    let sa = format!(
        "system:serviceaccount:{}:{}",
        crate::install::NS,
        crate::install::SA
    );
    let can = env
        .kubectl(&[
            "auth",
            "can-i",
            "delete",
            "mutatingwebhookconfigurations/kong-fallback-operator",
            "--as",
            &sa,
        ])
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    // ...and with the right to, the registration is deleted (inert here: no namespace has
    // the label it selects).
    let mwc_name = format!("kfo-cleanup-{ns}");
    let mwc: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": mwc_name},
        "webhooks": [{"name": "inject.fallback.kong-dp.io", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Ignore",
            "namespaceSelector": {"matchLabels": {"kfo-cleanup-test": "nothing"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "clientConfig": {"url": "https://127.0.0.1:1/mutate"}}]
    }))
    .unwrap();
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    mwcs.create(&pp, &mwc).await.unwrap();
    let out = cleanup(
        env.kubeconfig_path(),
        &[
            "--namespace",
            &ns,
            "--delete-webhook-configuration",
            "--webhook-configuration",
            &mwc_name,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("MutatingWebhookConfiguration {mwc_name}: deleted")),
        "{}",
        text(&out)
    );
    assert!(mwcs.get_opt(&mwc_name).await.unwrap().is_none());

    // The namespace can go. There is no namespace controller here; do its work: the other
    // finalizer's owner lets go, the contents are deleted (nothing of ours holds them),
    // and the namespace is finalized once empty.
    policies
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    for name in ["shared", "silent"] {
        policies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    assert!(
        policies
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let finalize = std::env::temp_dir().join(format!("kfo-cleanup-{ns}.json"));
    std::fs::write(
        &finalize,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
               "spec": {"finalizers": []}})
        .to_string(),
    )
    .unwrap();
    let out = env
        .kubectl(&[
            "replace",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/finalize"),
            "-f",
            finalize.to_str().unwrap(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    until("the namespace gone", async || {
        namespaces
            .get_opt(&ns)
            .await
            .is_ok_and(|n| n.is_none())
            .then_some(())
    })
    .await;
    drop(silent);
}

#[tokio::test]
async fn removing_the_finalizer_from_a_stale_copy_keeps_a_finalizer_added_since() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let admin = env.client().await.unwrap();
    let ns = env.namespace("cleanup-race").await.unwrap();
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(admin.clone(), &ns);
    let mut p = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "gcs://bkt/kong", "readCredentials": {"ambient": true}},
            "exporter": {"mode": "None"}
        }),
    );
    p.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
    let stale = policies.create(&PostParams::default(), &p).await.unwrap();
    // Another controller adds its finalizer after the cleanup read the policy.
    policies
        .patch(
            "prod",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [FINALIZER, "example.com/late"]}})),
        )
        .await
        .unwrap();
    let said = kong_fallback_operator::cleanup::remove_finalizer(&policies, &stale)
        .await
        .unwrap();
    assert_eq!(said, "finalizer removed");
    assert_eq!(
        policies.get("prod").await.unwrap().finalizers(),
        ["example.com/late"]
    );
    assert_eq!(
        kong_fallback_operator::cleanup::remove_finalizer(&policies, &stale)
            .await
            .unwrap(),
        "no finalizer of ours"
    );
}

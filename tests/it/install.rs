//! Installing from deploy/ (the chart rendered with default values) on the real apiserver
//! with RBAC enforced, then running the operator as the chart's ServiceAccount through
//! every capability: the RBAC is sufficient, and it grants nothing the code does not use
//! (the calls made are read from the apiserver's audit log).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kfo_testenv::{KongCp, Mtls, kube, minio};
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kong_fallback_operator::kong::config::config_hashes;
use kong_fallback_operator::webhook::registration;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::wait::until;

const DEPLOY: &str = "deploy/kong-fallback-operator.yaml";
pub(crate) const NS: &str = "kong-fallback-operator";
pub(crate) const SA: &str = "kong-fallback-operator";

/// The API calls the operator makes: (API group, resource, verb), for the static checks of
/// other renderings. The live run below checks this list, and the chart, against the calls
/// the apiserver audited.
const USED: &[(&str, &str, &str)] = &[
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"), // check_crd
    ("fallback.kong-dp.io", "fallbackconfigpolicies", "get"),     // finalizer helper
    ("fallback.kong-dp.io", "fallbackconfigpolicies", "list"),    // controller
    ("fallback.kong-dp.io", "fallbackconfigpolicies", "watch"),   // controller
    ("fallback.kong-dp.io", "fallbackconfigpolicies", "patch"),   // finalizer add/remove
    (
        "fallback.kong-dp.io",
        "fallbackconfigpolicies/status",
        "patch",
    ), // status (SSA)
    ("", "pods", "list"), // pod report (metadata); cleanup waits for the operator's pods
    ("", "pods", "watch"),
    ("", "secrets", "get"),  // credentials, cluster certificate, webhook TLS
    ("", "secrets", "list"), // Secret watch re-triggers policies
    ("", "secrets", "watch"),
    ("", "secrets", "create"), // webhook TLS (operator namespace)
    ("", "secrets", "update"), // webhook TLS rotation (operator namespace)
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "list"), // elector watch
    ("coordination.k8s.io", "leases", "watch"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"), // renew, release (compare-and-swap)
    ("coordination.k8s.io", "leases", "delete"), // finalizer
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    ("apps", "deployments", "patch"), // cleanup --stop-deployment (its own, by name)
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
    ), // SSA
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "list",
    ), // watch by name: restore after a chart re-apply
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "watch",
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "delete",
    ), // cleanup --delete-webhook-configuration
];

/// What `rbac.rollout=true` adds for `dataPlanes.rollout` (off by default).
const USED_BY_ROLLOUT: &[(&str, &str, &str)] = &[
    ("", "pods", "get"),            // the injection dry run of one pod per workload
    ("apps", "replicasets", "get"), // a pod's Deployment
    ("apps", "deployments", "get"), // the pacing annotation
    ("apps", "statefulsets", "get"),
    ("apps", "daemonsets", "get"),
    ("apps", "deployments", "patch"), // the restart
    ("apps", "statefulsets", "patch"),
    ("apps", "daemonsets", "patch"),
];

/// The chart rendered with `--set rbac.rollout=true`.
fn rendered_with_rollout() -> Vec<Value> {
    rendered_with(&["rbac.rollout=true"])
}

/// The chart rendered with `--set` of each of `values`.
fn rendered_with(values: &[&str]) -> Vec<Value> {
    let helm = kfo_testenv::binary("helm").unwrap();
    let out = std::process::Command::new(&helm)
        .args([
            "template",
            NS,
            "charts/kong-fallback-operator",
            "--namespace",
            NS,
        ])
        .args(values.iter().flat_map(|v| ["--set", v]))
        .current_dir(kfo_testenv::repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_norway::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// (group, resource, verb) of every Role and ClusterRole rule in `docs`.
fn granted(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for doc in docs {
        if !matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in doc["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        granted.insert((
                            group.as_str().unwrap().to_owned(),
                            resource.as_str().unwrap().to_owned(),
                            verb.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    granted
}

/// One install per test binary: the tests below (and `cleanup`'s) share it.
static INSTALLED: Mutex<bool> = Mutex::const_new(false);

pub(crate) async fn install() {
    let mut done = INSTALLED.lock().await;
    if *done {
        return;
    }
    let env = kube().await;
    // NB: a server-side dry run cannot create the namespace its other objects go into.
    let _ = env.kubectl(&["create", "namespace", NS]).await.unwrap();
    for dry_run in [true, false] {
        let mut args = vec![
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=install-test",
            "-f",
            DEPLOY,
        ];
        if dry_run {
            args.push("--dry-run=server");
        }
        let out = env.kubectl(&args).await.unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *done = true;
}

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(kfo_testenv::repo_root().join(DEPLOY)).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{DEPLOY}: a document does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn deploy_is_the_chart_rendered_with_default_values() {
    let out = std::process::Command::new(kfo_testenv::repo_root().join("tools/render-deploy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read(kfo_testenv::repo_root().join(DEPLOY)).unwrap();
    assert!(
        out.stdout == file,
        "{DEPLOY} differs from the chart: run `make generate`"
    );
}

#[test]
fn the_chart_grants_exactly_what_the_code_uses() {
    let as_set = |list: &[&[(&str, &str, &str)]]| -> BTreeSet<(String, String, String)> {
        list.iter()
            .flat_map(|l| l.iter())
            .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
            .collect()
    };
    for (what, granted, used) in [
        ("defaults", granted(&documents()), as_set(&[USED])),
        (
            "rbac.rollout=true",
            granted(&rendered_with_rollout()),
            as_set(&[USED, USED_BY_ROLLOUT]),
        ),
        (
            "watchNamespace=kong",
            granted(&rendered_with(&["watchNamespace=kong"])),
            as_set(&[USED]),
        ),
    ] {
        let extra: Vec<_> = granted.difference(&used).collect();
        let missing: Vec<_> = used.difference(&granted).collect();
        assert!(extra.is_empty(), "{what}: granted but unused: {extra:?}");
        assert!(
            missing.is_empty(),
            "{what}: used but not granted: {missing:?}"
        );
    }
    // With watchNamespace, no rule on a namespaced resource is cluster-wide: every Secret,
    // pod and Lease right is a Role in that namespace.
    let docs = rendered_with(&["watchNamespace=kong", "rbac.rollout=true"]);
    let cluster_role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let cluster_wide = granted(std::slice::from_ref(cluster_role));
    assert!(
        cluster_wide.iter().all(|(g, _, _)| matches!(
            g.as_str(),
            "apiextensions.k8s.io" | "admissionregistration.k8s.io"
        )),
        "{cluster_wide:?}"
    );
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == "kong")
        .expect("a Role in the watched namespace");
    assert!(granted(std::slice::from_ref(role)).contains(&(
        String::new(),
        "secrets".to_owned(),
        "get".to_owned()
    )));
}

#[test]
fn the_deployment_runs_restricted() {
    let docs = documents();
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    // NB: rendered without hooks: applied with the rest, the chart's pre-delete Job
    // would run `cleanup` (stop the operator, strip the finalizers) at install time.
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["annotations"]["helm.sh/hook"].is_string()),
        "a Helm hook in {DEPLOY}"
    );
}

/// `kubectl apply --server-side` of `path` as the install's field manager, as a chart
/// (re-)apply or a GitOps sync does.
async fn apply_as_install(env: &kfo_testenv::KubeEnv, path: &std::path::Path) {
    crate::cluster::kubectl_ok(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=install-test",
            "-f",
            path.to_str().unwrap(),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_operator_as_the_charts_service_account_does_everything() {
    install().await;
    let env = kube().await;
    let admin = env.client().await.unwrap();
    // The ServiceAccount's own token: every call below is authorized by the chart's RBAC.
    let token =
        crate::cluster::kubectl_ok(env, &["create", "token", SA, "-n", NS, "--duration=1h"])
            .await
            .trim()
            .to_owned();
    let as_sa = env.client_with_token(&token).await.unwrap();

    let ns = env.namespace("install").await.unwrap();
    let s3 = minio().await;
    let bucket = s3.bucket("install").await.unwrap();
    let ro = s3.read_only_credentials(&bucket).await.unwrap();
    let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
    let pp = PostParams::default();
    let secret = |name: &str, data: Value| -> Secret {
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
        )
        .unwrap()
    };
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    for s in [
        secret(
            "kong-cluster-cert",
            json!({"tls.crt": cp.certs.cert_pem, "tls.key": cp.certs.key_pem}),
        ),
        secret(
            "fallback-write",
            json!({"AWS_ACCESS_KEY_ID": s3.root_user, "AWS_SECRET_ACCESS_KEY": s3.root_password}),
        ),
        secret(
            "fallback-read",
            json!({"AWS_ACCESS_KEY_ID": ro.access_key_id, "AWS_SECRET_ACCESS_KEY": ro.secret_access_key, "AWS_SESSION_TOKEN": ro.session_token}),
        ),
    ] {
        secrets.create(&pp, &s).await.unwrap();
    }
    // A Deployment, a StatefulSet and a DaemonSet whose pods predate the policy (no
    // controller-manager: made by hand).
    let deployments = crate::cluster::deployment_with_a_pod(&admin, &ns).await;
    workload_with_a_pod(&admin, &ns, "StatefulSet").await;
    workload_with_a_pod(&admin, &ns, "DaemonSet").await;
    let template = crate::cluster::kong_dp_template();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);

    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}, "rollout": true},
            "storage": {"url": format!("s3://{bucket}/kong"), "endpoint": s3.endpoint, "region": "us-east-1",
                        "readCredentials": {"secretName": "fallback-read"},
                        "writeCredentials": {"secretName": "fallback-write"}},
            "exporter": {"mode": "Operator", "versions": ["3.6.1.4"], "minInterval": "0s",
                         "controlPlane": {"endpoint": cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}}
        }),
    );
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(admin.clone(), &ns);
    policies.create(&pp, &policy).await.unwrap();
    let table = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"svc","host":"example.com","port":443}]}"#;
    let hash = config_hashes(&serde_json::from_str(table).unwrap()).config;
    cp.push(table, &hash);

    let webhook = crate::cluster::local_webhook(
        NS,
        "kong-fallback-operator-webhook-tls",
        "kong-fallback-operator",
        registration::FailurePolicy::Ignore,
        Duration::from_secs(5),
    );
    let registration::Target::Url(url) = webhook.target.clone() else {
        unreachable!("a local webhook is registered by URL")
    };
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(webhook),
        ..controller::Settings::new("kfo-install-test")
    };
    // The operator runs outside the cluster here: point the chart's registration at its
    // URL instead of the Service (as the install's field manager, so the service goes).
    let mut mwc: Value = documents()
        .into_iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    mwc["webhooks"][0]["clientConfig"] = json!({"url": url});
    let path = std::env::temp_dir().join(format!("kfo-install-mwc-{}.json", std::process::id()));
    std::fs::write(&path, mwc.to_string()).unwrap();
    apply_as_install(env, &path).await;
    let health = settings.health.clone();
    let running = tokio::spawn(controller::run(as_sa, settings));

    // Exported, with status, leader and Events written as the ServiceAccount.
    until("Exporting in status", async || {
        let s = policies.get("prod").await.ok()?.status?;
        (s.exports.iter().any(|e| e.config_hash == hash) && s.leader.is_some()).then_some(())
    })
    .await;
    assert_eq!(
        &s3.read(&bucket, "kong/3.6.1.4/config.json")
            .await
            .unwrap()
            .unwrap()[..],
        table.as_bytes()
    );
    until("ready", async || health.pending().is_empty().then_some(())).await;
    // The webhook: registered (SSA patch), serving with its Secret (create), injecting.
    let mut injected = false;
    for i in 0..50 {
        let p = pods
            .create(
                &pp,
                &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("kong-dp-new-{i}"), "labels": {"app": "kong-dp"}},
                "spec": template["spec"]}))
                .unwrap(),
            )
            .await
            .unwrap();
        if p.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kong_fallback_operator::inject::ANNOTATION)
        {
            injected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(injected, "a new pod was injected");
    // A `helm upgrade` / GitOps sync puts the chart's inert registration back (here as the
    // install's field manager): the operator restores it and injection comes back.
    apply_as_install(env, &path).await;
    let mwcs: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(admin.clone());
    let expression =
        |c: &k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration| {
            c.webhooks
                .as_ref()
                .and_then(|w| w[0].match_conditions.clone())
                .unwrap_or_default()[0]
                .expression
                .clone()
        };
    let restored = until("the registration restored", async || {
        let c = mwcs.get("kong-fallback-operator").await.ok()?;
        (expression(&c) != "false").then_some(c)
    })
    .await;
    assert!(
        expression(&restored).contains(&format!("request.namespace == '{ns}'")),
        "{}",
        expression(&restored)
    );
    let p = pods
        .create(
            &pp,
            &serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kong-dp-after-reapply", "labels": {"app": "kong-dp"}},
            "spec": template["spec"]}))
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        p.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kong_fallback_operator::inject::ANNOTATION),
        "a pod created after the chart re-apply was injected"
    );
    // The policy asks for rollouts, but the default install may not restart workloads:
    // the rollout is held with a Warning that names the chart value, and nothing restarts.
    let held = until("a RolloutHeld Event naming rbac.rollout", async || {
        let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
        let list = events.list(&Default::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("RolloutHeld")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("rbac.rollout=true"))
        })
    })
    .await;
    assert_eq!(held.type_.as_deref(), Some("Warning"));
    assert!(
        deployments
            .get("kong-dp")
            .await
            .unwrap()
            .spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .is_none_or(|a| !a.contains_key("kubectl.kubernetes.io/restartedAt")),
        "restarted without the rollout grant"
    );
    // Grant rollouts as `rbac.rollout=true` does (the ClusterRole of that rendering
    // replaces the default one).
    let with_rollout = rendered_with_rollout()
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole")
        .unwrap();
    let path_rbac =
        std::env::temp_dir().join(format!("kfo-install-rbac-{}.json", std::process::id()));
    std::fs::write(&path_rbac, with_rollout.to_string()).unwrap();
    apply_as_install(env, &path_rbac).await;
    // The rollout: the old pod's Deployment is restarted.
    until("the Deployment restarted", async || {
        deployments
            .get("kong-dp")
            .await
            .ok()
            .and_then(|d| d.spec.template.metadata?.annotations)
            .filter(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
    })
    .await;
    for kind in ["StatefulSet", "DaemonSet"] {
        until(&format!("the {kind} restarted"), async || {
            restarted(&admin, &ns, kind).await.then_some(())
        })
        .await;
    }
    // The webhook certificate falls due: rotated in its Secret (an update).
    let tls_secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let tls_name = "kong-fallback-operator-webhook-tls";
    let old_ca = tls_secrets.get(tls_name).await.unwrap().data.unwrap()["ca.crt"].clone();
    tls_secrets
        .patch(
            tls_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                kong_fallback_operator::webhook::certs::NOT_AFTER: "2000-01-01T00:00:00Z"}}})),
        )
        .await
        .unwrap();
    until("the webhook certificate rotated", async || {
        let data = tls_secrets.get(tls_name).await.ok()?.data?;
        (data.get("ca.crt")? != &old_ca).then_some(())
    })
    .await;
    let reasons = crate::cluster::event_reasons(&admin, &ns).await;
    assert!(reasons.iter().any(|r| r == "Exported"), "{reasons:?}");
    // Deletion: the finalizer deletes the Lease as the ServiceAccount, then goes.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &ns);
    assert!(leases.get_opt("prod").await.unwrap().is_some());
    policies.delete("prod", &Default::default()).await.unwrap();
    until("the policy gone", async || {
        policies
            .get_opt("prod")
            .await
            .is_ok_and(|p| p.is_none())
            .then_some(())
    })
    .await;
    assert!(leases.get_opt("prod").await.unwrap().is_none());
    running.abort();

    // Uninstall, as the chart's pre-delete hook runs it, with the same token.
    let kubeconfig =
        std::env::temp_dir().join(format!("kfo-install-sa-{}.yaml", std::process::id()));
    let admin_config = std::fs::read_to_string(env.kubeconfig_path()).unwrap();
    std::fs::write(&kubeconfig, admin_config.replace(env.admin_token(), &token)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .args([
            "cleanup",
            "--namespace",
            &ns,
            "--stop-deployment",
            "kong-fallback-operator",
            "--operator-namespace",
            NS,
            "--stop-timeout",
            "1",
            "--delete-webhook-configuration",
            "--webhook-configuration",
            "kong-fallback-operator",
        ])
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The finalizer helper re-reads a policy (get) only when its list changed since it was
    // read, as when another controller adds a finalizer meanwhile: provoke that, as the
    // ServiceAccount.
    let mut p = crate::cluster::policy(
        "stale",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "gcs://bkt/kong", "readCredentials": {"ambient": true}},
            "exporter": {"mode": "None"}
        }),
    );
    p.metadata.finalizers = Some(vec![controller::FINALIZER.to_owned()]);
    let stale = policies.create(&pp, &p).await.unwrap();
    policies
        .patch(
            "stale",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"finalizers": [controller::FINALIZER, "example.com/late"]}}),
            ),
        )
        .await
        .unwrap();
    let sa_policies: Api<FallbackConfigPolicy> =
        Api::namespaced(env.client_with_token(&token).await.unwrap(), &ns);
    assert_eq!(
        kong_fallback_operator::cleanup::remove_finalizer(&sa_policies, &stale)
            .await
            .unwrap(),
        "finalizer removed"
    );

    // What this run called, as the apiserver audited it, is what the chart grants: no more,
    // no less. NB: derived from the calls made, not from a list kept by hand.
    let called = env.audited_calls(&token).unwrap();
    let granted = granted(&rendered_with_rollout());
    let extra: Vec<_> = granted.difference(&called).collect();
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(missing.is_empty(), "called but not granted: {missing:?}");
    assert!(
        extra.is_empty(),
        "granted but never called in the live run: {extra:?}"
    );
    // The list the static checks of other renderings use is the same set.
    let listed: BTreeSet<(String, String, String)> = USED
        .iter()
        .chain(USED_BY_ROLLOUT)
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(
        listed, called,
        "USED and USED_BY_ROLLOUT differ from the audited calls"
    );
}

/// A `kind` (StatefulSet or DaemonSet) named after it, with one pod it owns (app=kong-dp).
async fn workload_with_a_pod(client: &kube::Client, ns: &str, kind: &str) {
    let name = kind.to_ascii_lowercase();
    let mut template = crate::cluster::kong_dp_template();
    template["metadata"]["labels"]["workload"] = json!(name);
    let mut spec = json!({"selector": {"matchLabels": {"workload": name}}, "template": template});
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    let object = json!({
        "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec
    });
    let uid = match kind {
        "StatefulSet" => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object).unwrap(),
                )
                .await
                .unwrap()
                .metadata
                .uid
        }
        _ => {
            Api::<DaemonSet>::namespaced(client.clone(), ns)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(object).unwrap(),
                )
                .await
                .unwrap()
                .metadata
                .uid
        }
    };
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-0"), "labels": template["metadata"]["labels"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name,
                                 "uid": uid, "controller": true}]},
        "spec": template["spec"]
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// Whether the `kind` of [`workload_with_a_pod`] carries the restart annotation.
async fn restarted(client: &kube::Client, ns: &str, kind: &str) -> bool {
    let name = kind.to_ascii_lowercase();
    let template = match kind {
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get(&name)
            .await
            .ok()
            .map(|o| o.spec.template),
        _ => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(&name)
            .await
            .ok()
            .map(|o| o.spec.template),
    };
    template
        .and_then(|t| t.metadata?.annotations)
        .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
}

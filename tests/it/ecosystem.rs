//! What the ecosystem around the operator reads: the release workflow passes actionlint,
//! and Argo CD's health check (deploy/argocd/health.lua), run in gopher-lua as Argo CD
//! runs it, judges the statuses the operator writes: those its pure status function
//! computes, and objects recorded from a real kube-apiserver with the controller running.
//! So does kstatus (sigs.k8s.io/cli-utils, tools/go/kstatus), what Flux's `wait` and
//! `healthChecks` use, on objects a real operator process wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kong_fallback_operator::api::{FallbackConfigPolicyStatus, Problem};
use kong_fallback_operator::controller::exporters::VersionState;
use kong_fallback_operator::controller::status::{ExportView, desired_status, set_progress};
use serde_json::{Value, json};

const HEALTH_LUA: &str = "deploy/argocd/health.lua";
const ARGOCD_CM: &str = "deploy/argocd/argocd-cm.yaml";
const HEALTH_KEY: &str = "resource.customizations.health.fallback.kong-dp.io_FallbackConfigPolicy";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// NB: shellcheck and pyflakes, which actionlint runs on `run:` scripts when they are on
/// PATH, are switched off: they are not pinned tools here, and the result must not depend
/// on what a machine happens to have installed.
#[test]
fn the_workflows_pass_actionlint() {
    let actionlint = kfo_testenv::binary("actionlint").unwrap();
    let out = Command::new(&actionlint)
        .args(["-no-color", "-shellcheck=", "-pyflakes="])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "actionlint found problems in .github/workflows:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // actionlint also succeeds when it finds nothing to check.
    assert!(
        root().join(".github/workflows/release.yml").is_file(),
        "the release workflow is missing"
    );
}

/// Runs a checker (`bin args...`) with `object` as JSON on stdin: the `status` and
/// `message` of the JSON it prints.
fn check_with(bin: &str, args: &[&std::ffi::OsStr], object: &Value) -> (String, String) {
    let checker = kfo_testenv::binary(bin).unwrap();
    let mut child = Command::new(&checker)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{bin} failed on {object}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["status"].as_str().unwrap().to_owned(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

/// Runs health.lua in gopher-lua (tools/go/argo-health) on `object`: (status, message).
fn argo_health(object: &Value) -> (String, String) {
    let script = root().join(HEALTH_LUA);
    check_with("argo-health", &[script.as_os_str()], object)
}

fn now() -> Time {
    Time(Timestamp::from_second(1_790_000_000).unwrap())
}

/// A policy object with `generation` and a status the controller computes.
fn policy(generation: i64, status: &FallbackConfigPolicyStatus) -> Value {
    json!({
        "apiVersion": "fallback.kong-dp.io/v1alpha1",
        "kind": "FallbackConfigPolicy",
        "metadata": {"name": "prod", "namespace": "kong", "generation": generation},
        "spec": {},
        "status": serde_json::to_value(status).unwrap(),
    })
}

/// The status the controller writes for generation 2 of a valid policy whose exporter is
/// connected to the control plane, with `exported` deciding whether a configuration has
/// been stored yet.
fn operator_mode_status(exported: bool) -> FallbackConfigPolicyStatus {
    let state = VersionState {
        connected: true,
        last_export: exported.then(|| {
            kong_fallback_operator::controller::exporters::ExportRecord {
                key: "kong/3.10.0.4/config.json".into(),
                hash: "abc".into(),
                bytes: 10,
                at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000),
            }
        }),
        ..Default::default()
    };
    let view = ExportView {
        states: [("3.10.0.4".to_owned(), state)].into(),
        ..Default::default()
    };
    desired_status(&Default::default(), Some(2), &[], Some(&view), now())
}

#[test]
fn argo_cd_sees_a_ready_policy_as_healthy() {
    let status = operator_mode_status(true);
    let (health, message) = argo_health(&policy(2, &status));
    assert_eq!(health, "Healthy", "{message}");
    assert!(message.contains("Ready=True"), "{message}");
}

#[test]
fn argo_cd_sees_a_policy_not_reconciled_since_its_last_change_as_progressing() {
    // Ready for generation 2, but the spec has changed since (generation 3).
    let status = operator_mode_status(true);
    let (health, message) = argo_health(&policy(3, &status));
    assert_eq!(health, "Progressing", "{message}");
    assert!(message.contains("generation 3"), "{message}");
    // A policy the operator has not reported on at all.
    let (health, _) = argo_health(&policy(1, &FallbackConfigPolicyStatus::default()));
    assert_eq!(health, "Progressing");
}

#[test]
fn argo_cd_sees_a_policy_waiting_for_its_first_export_as_progressing() {
    let status = operator_mode_status(false);
    let (health, message) = argo_health(&policy(2, &status));
    assert_eq!(health, "Progressing", "{message}");
    assert!(message.contains("Waiting"), "{message}");
}

#[test]
fn argo_cd_sees_an_invalid_policy_as_degraded() {
    let problems = [Problem {
        field: "spec.storage.writeCredentials".into(),
        message: "required in Operator mode".into(),
    }];
    let status = desired_status(&Default::default(), Some(1), &problems, None, now());
    let (health, message) = argo_health(&policy(1, &status));
    assert_eq!(health, "Degraded", "{message}");
    assert!(
        message.contains("Valid=False") && message.contains("writeCredentials"),
        "{message}"
    );
}

#[test]
fn argo_cd_sees_a_policy_that_cannot_export_as_degraded() {
    let view = ExportView {
        setup_error: Some((
            "SecretMissing".into(),
            "secret kong/fallback-write not found".into(),
        )),
        ..Default::default()
    };
    let status = desired_status(&Default::default(), Some(1), &[], Some(&view), now());
    let (health, message) = argo_health(&policy(1, &status));
    assert_eq!(health, "Degraded", "{message}");
    assert!(message.contains("SecretMissing"), "{message}");
}

#[test]
fn argo_cd_sees_a_suspended_policy_as_suspended() {
    use kong_fallback_operator::controller::status::set_suspended;
    let mut status = operator_mode_status(true);
    set_suspended(&mut status, Some(2), now());
    let (health, message) = argo_health(&policy(2, &with_progress(status)));
    assert_eq!(health, "Suspended", "{message}");
    assert!(message.contains("spec.suspend"), "{message}");
}

/// argocd-cm.yaml carries health.lua verbatim (`make generate` writes it).
#[test]
fn the_argocd_cm_snippet_carries_the_health_script() {
    let cm: Value =
        serde_norway::from_str(&std::fs::read_to_string(root().join(ARGOCD_CM)).unwrap()).unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    let script = std::fs::read_to_string(root().join(HEALTH_LUA)).unwrap();
    assert!(
        cm["data"][HEALTH_KEY].as_str() == Some(script.as_str()),
        "{ARGOCD_CM} does not carry {HEALTH_LUA} under {HEALTH_KEY}: run `make generate`"
    );
}

/// The condition `type_` of a policy object as the apiserver returns it.
fn condition(obj: &Value, type_: &str) -> Option<(String, String, Option<i64>)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["observedGeneration"].as_i64(),
            )
        })
}

/// The same judgements on objects recorded from a real kube-apiserver while the real
/// controller works on them: refused spec, spec changed and not yet reconciled, a missing
/// Secret, Ready.
#[tokio::test]
async fn argo_cd_judges_policies_recorded_from_a_real_apiserver() {
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kube::CustomResourceExt;
    use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};

    let env = kfo_testenv::kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("argo").await.unwrap();
    let running = crate::cluster::run_controller(&client, &ns, "test-replica");
    let typed: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<FallbackConfigPolicy>(&()),
    );
    let get = async || serde_json::to_value(raw.get("prod").await.ok()?).ok();

    // Admitted by the apiserver, refused by validate(): a plugin listed twice.
    let policy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://fallback/kong", "region": "us-east-1", "readCredentials": {"secretName": "fallback-read"}},
            "exporter": {"mode": "None", "plugins": crate::cluster::plugins_listed_twice()}
        }),
    );
    typed.create(&PostParams::default(), &policy).await.unwrap();
    let invalid = crate::wait::until("Valid=False", async || {
        get()
            .await
            .filter(|o| condition(o, "Valid").is_some_and(|c| c.0 == "False"))
    })
    .await;
    let (health, message) = argo_health(&invalid);
    assert_eq!(health, "Degraded", "{message}\n{invalid:#}");

    // The spec is fixed: the object the apiserver answers has the new generation and the
    // status of the old one.
    let s3 = kfo_testenv::minio().await;
    let bucket = s3.bucket("argo").await.unwrap();
    let fix = json!({"spec": {
        "exporter": {"plugins": null},
        "storage": {"url": format!("s3://{bucket}/kong"), "region": "us-east-1", "endpoint": s3.endpoint}
    }});
    let patched = raw
        .patch("prod", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let patched = serde_json::to_value(patched).unwrap();
    assert_eq!(patched["metadata"]["generation"], 2, "{patched:#}");
    assert_eq!(patched["status"]["observedGeneration"], 1, "{patched:#}");
    let (health, message) = argo_health(&patched);
    assert_eq!(health, "Progressing", "{message}\n{patched:#}");

    // Reconciled: valid, but the read-credentials Secret is missing.
    let missing = crate::wait::until("Ready=False SecretMissing", async || {
        get().await.filter(|o| {
            condition(o, "Ready").is_some_and(|c| c.1 == "SecretMissing" && c.2 == Some(2))
        })
    })
    .await;
    let (health, message) = argo_health(&missing);
    assert_eq!(health, "Degraded", "{message}\n{missing:#}");
    assert!(message.contains("SecretMissing"), "{message}");

    // The read-only credentials a data plane would get: Ready.
    let ro = s3.read_only_credentials(&bucket).await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fallback-read"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": ro.access_key_id,
            "AWS_SECRET_ACCESS_KEY": ro.secret_access_key,
            "AWS_SESSION_TOKEN": ro.session_token
        }
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let ready = crate::wait::until("Ready=True", async || {
        get()
            .await
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    let (health, message) = argo_health(&ready);
    assert_eq!(health, "Healthy", "{message}\n{ready:#}");

    running.abort();
}

/// Runs kstatus' `Compute` (tools/go/kstatus, cli-utils as Flux links it) on `object`:
/// cli-utils' kstatus (tools/go/kstatus) on `object`: (status, message).
fn kstatus(object: &Value) -> (String, String) {
    check_with("kstatus", &[], object)
}

/// What the controller writes: [`desired_status`] and then kstatus' conditions.
fn with_progress(mut status: FallbackConfigPolicyStatus) -> FallbackConfigPolicyStatus {
    set_progress(&mut status, Some(2), now());
    status
}

#[test]
fn kstatus_reads_the_statuses_the_controller_computes() {
    let ready = with_progress(operator_mode_status(true));
    assert_eq!(kstatus(&policy(2, &ready)).0, "Current");
    // The spec changed since: InProgress whatever the conditions say.
    assert_eq!(kstatus(&policy(3, &ready)).0, "InProgress");
    let (st, message) = kstatus(&policy(2, &with_progress(operator_mode_status(false))));
    assert_eq!(st, "InProgress", "{message}");
    assert!(
        message.contains("waiting for the first configuration"),
        "{message}"
    );
    let problems = [Problem {
        field: "spec.exporter.plugins[1].name".into(),
        message: "plugin my_auth is listed twice".into(),
    }];
    let invalid = with_progress(desired_status(
        &Default::default(),
        Some(2),
        &problems,
        None,
        now(),
    ));
    let (st, message) = kstatus(&policy(2, &invalid));
    assert_eq!(st, "Failed", "{message}");
    assert!(
        message.contains("spec.exporter.plugins[1].name"),
        "{message}"
    );
}

/// Issue 13 point 5, against a real apiserver and a real operator process: a policy whose
/// operator waits for the control plane's first configuration is InProgress, then Current
/// (and `kubectl wait --for=condition=Ready` returns), InProgress again the moment its
/// spec changes, and Failed with an invalid spec the apiserver admits.
#[tokio::test]
async fn kstatus_judges_policies_a_real_operator_wrote_as_flux_would() {
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};

    let mut fleet = crate::fleet::Fleet::new(
        "kstatus",
        crate::fleet::Timings {
            lease: 15,
            renew: 10,
            retry: 2,
        },
    )
    .await;
    // Read-only credentials that work, so that Ready depends on the export alone.
    fleet.working_read_credentials().await;
    let raw: Api<DynamicObject> = Api::namespaced_with(
        fleet.client.clone(),
        &fleet.ns,
        &ApiResource::erase::<FallbackConfigPolicy>(&()),
    );
    let get = async || serde_json::to_value(raw.get("prod").await.ok()?).ok();
    let _operator = fleet.start("kfo-0");

    // Connected, no configuration yet (the CP double has none): the operator is on it.
    let waiting = crate::wait::until("Reconciling=True", async || {
        get()
            .await
            .filter(|o| condition(o, "Reconciling").is_some_and(|c| c.0 == "True"))
    })
    .await;
    let (st, message) = kstatus(&waiting);
    assert_eq!(st, "InProgress", "{message}\n{waiting:#}");

    fleet.push();
    let ready = crate::wait::until("Ready=True", async || {
        get()
            .await
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
    })
    .await;
    let (st, message) = kstatus(&ready);
    assert_eq!(st, "Current", "{message}\n{ready:#}");
    let env = kfo_testenv::kube().await;
    crate::cluster::kubectl_ok(
        env,
        &[
            "wait",
            "--for=condition=Ready",
            "--timeout=30s",
            "-n",
            &fleet.ns,
            "fcp/prod",
        ],
    )
    .await;

    // A spec change: the object the apiserver answers is ahead of its status.
    let change = json!({"spec": {"exporter": {"minInterval": "1s"}}});
    let changed = raw
        .patch("prod", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let changed = serde_json::to_value(changed).unwrap();
    let generation = changed["metadata"]["generation"].as_i64().unwrap();
    assert!(
        changed["status"]["observedGeneration"].as_i64() < Some(generation),
        "{changed:#}"
    );
    let (st, message) = kstatus(&changed);
    assert_eq!(st, "InProgress", "{message}\n{changed:#}");

    // An invalid spec the apiserver admits (only validate() refuses it): Stalled, Failed.
    let bad = json!({"spec": {"exporter": {"plugins": crate::cluster::plugins_listed_twice()}}});
    raw.patch("prod", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap();
    let stalled = crate::wait::until("Stalled=True", async || {
        get()
            .await
            .filter(|o| condition(o, "Stalled").is_some_and(|c| c.0 == "True"))
    })
    .await;
    let (st, message) = kstatus(&stalled);
    assert_eq!(st, "Failed", "{message}\n{stalled:#}");
    assert!(
        message.contains("spec.exporter.plugins[1].name"),
        "{message}"
    );
}

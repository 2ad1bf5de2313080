//! The FallbackConfigPolicy API against a real kube-apiserver: the generated CRD installs,
//! valid policies are stored with their defaults, and the schema's patterns, enums and CEL
//! rules make the apiserver itself refuse bad ones, naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kfo_testenv::{KubeEnv, kube};
use kong_fallback_operator::api::{ExporterMode, FallbackConfigPolicy};
use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::cluster::{kubectl_ok, policy};

async fn setup() -> (&'static KubeEnv, kube::Client) {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    (env, env.client().await.unwrap())
}

fn valid_spec() -> serde_json::Value {
    json!({
        "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
        "storage": {
            "url": "s3://fallback/kong",
            "endpoint": "http://minio.minio:9000",
            "region": "us-east-1",
            "readCredentials": {"secretName": "fallback-read"},
            "writeCredentials": {"secretName": "fallback-write"}
        },
        "exporter": {
            "mode": "Operator",
            "controlPlane": {"endpoint": "kong-cp.kong.svc:8005", "clusterCertSecret": "kong-cluster-cert"}
        }
    })
}

/// Creates `spec` and returns the apiserver's refusal message (panics if it was accepted).
async fn rejection(client: &kube::Client, ns: &str, spec: serde_json::Value) -> String {
    create_untyped(client, ns, spec, &PostParams::default()).await
}

/// Like [`rejection`], as a server-side dry run (`kubectl apply --dry-run=server`): the
/// apiserver runs defaulting and every validation, and stores nothing.
async fn dry_run_rejection(client: &kube::Client, ns: &str, spec: serde_json::Value) -> String {
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    create_untyped(client, ns, spec, &pp).await
}

async fn create_untyped(
    client: &kube::Client,
    ns: &str,
    spec: serde_json::Value,
    pp: &PostParams,
) -> String {
    // NB: untyped, because the typed spec cannot even hold most invalid values.
    let ar = kube::discovery::ApiResource::erase::<FallbackConfigPolicy>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let p: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "fallback.kong-dp.io/v1alpha1",
        "kind": "FallbackConfigPolicy",
        "metadata": {"name": kfo_testenv::unique_name("bad")},
        "spec": spec,
    }))
    .unwrap();
    match api.create(pp, &p).await {
        Ok(_) => panic!("the apiserver accepted an invalid policy"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn kubectl_applies_the_crd_file_and_it_becomes_established() {
    let env = kube().await;
    kubectl_ok(env, &["apply", "-f", "crds/"]).await;
    kubectl_ok(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/fallbackconfigpolicies.fallback.kong-dp.io",
        ],
    )
    .await;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let mut text = String::new();
    for _ in 0..60 {
        let out = env
            .kubectl(&["explain", "fcp.spec.storage.url"])
            .await
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("s3://<bucket>/<prefix>") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        text.contains("s3://<bucket>/<prefix>"),
        "kubectl explain does not show the doc comment: {text}"
    );
    // Defaults are explained where the fields are (issue 13 point 7).
    for (path, words) in [
        (
            "fcp.spec.storage.readCredentials.keys.accessKeyId",
            "Default: `AWS_ACCESS_KEY_ID`",
        ),
        ("fcp.spec.election.leaseDuration", "Default `15s`"),
        ("fcp.spec.suspend", "Default false"),
    ] {
        let out = env.kubectl(&["explain", path]).await.unwrap();
        // NB: kubectl wraps descriptions: compare with the whitespace collapsed.
        let text = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(text.contains(words), "{path}: {text}");
    }
}

#[tokio::test]
async fn a_valid_policy_is_stored_with_defaults_and_read_back_typed() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-valid").await.unwrap();
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &policy("prod", valid_spec()))
        .await
        .unwrap();

    let got = api.get("prod").await.unwrap();
    assert_eq!(got.spec.exporter.mode, ExporterMode::Operator);
    assert_eq!(
        got.spec.storage.endpoint.as_deref(),
        Some("http://minio.minio:9000")
    );
    assert_eq!(got.spec.election.lease_duration.to_string(), "15s");
    assert_eq!(got.spec.exporter.min_interval.to_string(), "5s");
    assert!(kong_fallback_operator::api::validate(&got.spec).is_empty());

    // The apiserver applied the schema defaults: they are in the stored object itself.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        env.client().await.unwrap(),
        &ns,
        &kube::discovery::ApiResource::erase::<FallbackConfigPolicy>(&()),
    );
    let stored = raw.get("prod").await.unwrap();
    assert_eq!(
        stored.data["spec"]["election"]["renewDeadline"],
        json!("10s")
    );
    assert_eq!(
        stored.data["spec"]["election"]["mirrorToStorage"],
        json!(true)
    );
}

#[tokio::test]
async fn a_bad_storage_url_scheme_is_rejected_naming_the_field() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-url").await.unwrap();
    let mut spec = valid_spec();
    spec["storage"]["url"] = json!("http://fallback/kong");
    let msg = rejection(&client, &ns, spec).await;
    assert!(msg.contains("spec.storage.url"), "{msg}");
}

/// Kong cannot use a bucket's root, and its URL normaliser reads dot segments, escapes and
/// `;params` differently from the store: the apiserver refuses all of them.
#[tokio::test]
async fn a_storage_url_kong_would_read_differently_is_rejected() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-prefix").await.unwrap();
    for url in [
        "s3://fallback",
        "s3://fallback/",
        "gcs://fallback//",
        "s3://fallback/a/../b",
        "s3://fallback/./kong",
        "s3://fallback/a%20b",
        "s3://fallback/kong;x=1",
    ] {
        let mut spec = valid_spec();
        spec["storage"]["url"] = json!(url);
        if url.starts_with("gcs") {
            spec["storage"].as_object_mut().unwrap().remove("endpoint");
        }
        let msg = rejection(&client, &ns, spec).await;
        assert!(msg.contains("spec.storage.url"), "{url}: {msg}");
    }
    // Dots inside a segment are fine.
    let mut spec = valid_spec();
    spec["storage"]["url"] = json!("s3://fallback/kong.v1/...x/");
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("dots", spec))
        .await
        .unwrap();
}

/// Label keys and values become CEL in the webhook's registration: the apiserver refuses
/// any that Kubernetes' label syntax refuses, before they can reach it.
#[tokio::test]
async fn label_selectors_with_invalid_labels_are_rejected() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-labels").await.unwrap();
    for (selector, field) in [
        (
            json!({"matchLabels": {"app": "a'b"}}),
            "spec.dataPlanes.selector.matchLabels",
        ),
        (
            json!({"matchLabels": {"a'b": "x"}}),
            "spec.dataPlanes.selector.matchLabels",
        ),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x') || true || ('"]}]}),
            "spec.dataPlanes.selector.matchExpressions[0].values[0]",
        ),
        (
            json!({"matchExpressions": [{"key": "app\\", "operator": "Exists"}]}),
            "spec.dataPlanes.selector.matchExpressions[0].key",
        ),
        (
            json!({"matchExpressions": [{"key": "app", "operator": "Near"}]}),
            "spec.dataPlanes.selector.matchExpressions[0].operator",
        ),
    ] {
        let mut spec = valid_spec();
        spec["dataPlanes"]["selector"] = selector.clone();
        let msg = rejection(&client, &ns, spec).await;
        assert!(msg.contains(field), "{selector}: {msg}");
    }
    let mut spec = valid_spec();
    spec["dataPlanes"]["selector"] = json!({
        "matchLabels": {"app.kubernetes.io/name": "kong", "tier": ""},
        "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a-1", "b_2.x"]}]
    });
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy("labels", spec))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bad_enum_is_rejected_naming_the_field_and_the_allowed_values() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-enum").await.unwrap();
    let mut spec = valid_spec();
    spec["exporter"]["mode"] = json!("Sideways");
    let msg = rejection(&client, &ns, spec).await;
    assert!(msg.contains("spec.exporter.mode"), "{msg}");
    assert!(msg.contains("\"BackupPods\""), "{msg}");

    let mut spec = valid_spec();
    spec["exporter"]["controlPlane"]["mtls"] = json!("none");
    let msg = rejection(&client, &ns, spec).await;
    assert!(msg.contains("spec.exporter.controlPlane.mtls"), "{msg}");
}

#[tokio::test]
async fn cel_rules_are_enforced_by_the_apiserver() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-cel").await.unwrap();

    let mut spec = valid_spec();
    spec["exporter"]
        .as_object_mut()
        .unwrap()
        .remove("controlPlane");
    let msg = rejection(&client, &ns, spec).await;
    assert!(
        msg.contains("spec.exporter") && msg.contains("controlPlane is required"),
        "{msg}"
    );

    let mut spec = valid_spec();
    spec["storage"]["readCredentials"] = json!({"secretName": "r", "ambient": true});
    let msg = rejection(&client, &ns, spec).await;
    assert!(
        msg.contains("spec.storage.readCredentials") && msg.contains("exactly one"),
        "{msg}"
    );

    let mut spec = valid_spec();
    spec["storage"]["url"] = json!("gcs://fallback/kong");
    let msg = rejection(&client, &ns, spec).await;
    assert!(
        msg.contains("spec.storage") && msg.contains("endpoint is only for S3"),
        "{msg}"
    );
}

#[tokio::test]
async fn durations_and_versions_are_checked_by_pattern() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-pattern").await.unwrap();

    let mut spec = valid_spec();
    spec["election"] = json!({"leaseDuration": "15 seconds"});
    let msg = rejection(&client, &ns, spec).await;
    assert!(msg.contains("spec.election.leaseDuration"), "{msg}");

    let mut spec = valid_spec();
    spec["exporter"]["versions"] = json!(["3.6.1.4", "3.6"]);
    let msg = rejection(&client, &ns, spec).await;
    assert!(msg.contains("spec.exporter.versions[1]"), "{msg}");
}

#[tokio::test]
async fn every_example_policy_is_valid_and_accepted_by_the_apiserver() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-examples").await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut p: FallbackConfigPolicy = serde_norway::from_str(&text).unwrap();
        let problems = kong_fallback_operator::api::validate(&p.spec);
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        p.metadata.namespace = Some(ns.clone());
        p.metadata.name = Some(kfo_testenv::unique_name("example"));
        let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &p)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 3, "expected the example policies, found {n}");
}

/// `spec` with `f` applied: a bad spec told as the change that makes it bad.
fn with(f: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let mut spec = valid_spec();
    f(&mut spec);
    spec
}

/// The cross-field rules, each a bad spec with the field and the words of its refusal.
fn cross_field_cases() -> Vec<(&'static str, serde_json::Value, &'static str, &'static str)> {
    let backup = json!({"selector": {"matchLabels": {"app": "kong-backup"}}});
    vec![
        (
            "Operator mode without write credentials",
            with(|s| {
                s["storage"]
                    .as_object_mut()
                    .unwrap()
                    .remove("writeCredentials");
            }),
            "spec.storage.writeCredentials",
            "writeCredentials is required with exporter.mode Operator or BackupPods",
        ),
        (
            "BackupPods mode without write credentials",
            with(|s| {
                s["exporter"]["mode"] = json!("BackupPods");
                s["backup"] = backup.clone();
                s["storage"]
                    .as_object_mut()
                    .unwrap()
                    .remove("writeCredentials");
            }),
            "spec.storage.writeCredentials",
            "writeCredentials is required",
        ),
        (
            "BackupPods mode without backup pods",
            with(|s| s["exporter"]["mode"] = json!("BackupPods")),
            "spec.backup",
            "backup is required with exporter.mode BackupPods",
        ),
        (
            "backup pods in Operator mode",
            with(|s| s["backup"] = backup.clone()),
            "spec.backup",
            "backup pods export only with exporter.mode BackupPods",
        ),
        (
            "backup pods in None mode",
            with(|s| {
                s["exporter"] = json!({"mode": "None"});
                s["backup"] = backup.clone();
            }),
            "spec.backup",
            "backup pods export only with exporter.mode BackupPods",
        ),
        (
            "an empty data-plane selector",
            with(|s| s["dataPlanes"]["selector"] = json!({})),
            "spec.dataPlanes.selector",
            "must not be empty",
        ),
        (
            "a data-plane selector with empty lists",
            with(|s| {
                s["dataPlanes"]["selector"] = json!({"matchLabels": {}, "matchExpressions": []})
            }),
            "spec.dataPlanes.selector",
            "must not be empty",
        ),
        (
            "an empty backup selector",
            with(|s| {
                s["exporter"]["mode"] = json!("BackupPods");
                s["backup"] = json!({"selector": {}});
            }),
            "spec.backup.selector",
            "must not be empty",
        ),
        (
            "Exists with values",
            with(
                |s| s["dataPlanes"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
            ),
            "spec.dataPlanes.selector.matchExpressions[0]",
            "In and NotIn need values",
        ),
        (
            "In without values",
            with(|s| {
                s["dataPlanes"]["selector"] =
                    json!({"matchExpressions": [{"key": "app", "operator": "In"}]})
            }),
            "spec.dataPlanes.selector.matchExpressions[0]",
            "In and NotIn need values",
        ),
        (
            "S3 without a region",
            with(|s| {
                s["storage"].as_object_mut().unwrap().remove("region");
            }),
            "spec.storage.region",
            "region is required for s3:// storage",
        ),
        (
            "S3 without a region, ambient credentials",
            with(|s| {
                s["storage"].as_object_mut().unwrap().remove("region");
                s["storage"]["readCredentials"] = json!({"ambient": true});
                s["storage"]["writeCredentials"] = json!({"ambient": true});
            }),
            "spec.storage.region",
            "region is required",
        ),
        (
            "importers holding the write Secret",
            with(|s| s["storage"]["readCredentials"] = json!({"secretName": "fallback-write"})),
            "spec.storage.readCredentials",
            "same Secret as writeCredentials",
        ),
        (
            "importers holding the write Secret, named by name and secretName",
            with(|s| s["storage"]["readCredentials"] = json!({"name": "fallback-write"})),
            "spec.storage.readCredentials",
            "same Secret as writeCredentials",
        ),
        (
            "both name and secretName",
            with(|s| s["storage"]["readCredentials"] = json!({"name": "a", "secretName": "a"})),
            "spec.storage.readCredentials.name",
            "set name or secretName",
        ),
        (
            "keys without a Secret",
            with(|s| {
                s["storage"]["readCredentials"] =
                    json!({"ambient": true, "keys": {"accessKeyId": "id"}})
            }),
            "spec.storage.readCredentials.keys",
            "keys name the keys of a Secret",
        ),
        (
            "both caCert and caCertRef",
            with(|s| {
                s["storage"]["caCert"] = json!({"secretName": "ca", "key": "ca.crt"});
                s["storage"]["caCertRef"] = json!({"name": "ca", "key": "ca.crt"});
            }),
            "spec.storage.caCertRef",
            "set caCertRef or caCert",
        ),
        (
            "a lease shorter than the renew deadline",
            with(|s| {
                s["election"] =
                    json!({"leaseDuration": "5s", "renewDeadline": "10s", "retryPeriod": "2s"})
            }),
            "spec.election.leaseDuration",
            "leaseDuration must be greater than renewDeadline",
        ),
        (
            "a renew deadline within 1.2 retry periods",
            with(|s| {
                s["election"] =
                    json!({"leaseDuration": "15s", "renewDeadline": "2400ms", "retryPeriod": "2s"})
            }),
            "spec.election.renewDeadline",
            "renewDeadline must be greater than 1.2 x retryPeriod",
        ),
        (
            "a zero retry period",
            with(|s| s["election"] = json!({"retryPeriod": "0s"})),
            "spec.election.retryPeriod",
            "retryPeriod must be greater than 0",
        ),
        (
            "a version listed twice",
            with(|s| s["exporter"]["versions"] = json!(["3.6.1.4", "3.9.1", "3.6.1.4"])),
            "spec.exporter.versions",
            "listed twice",
        ),
        (
            "a zero maxConfigSize",
            with(|s| s["exporter"]["maxConfigSize"] = json!("0")),
            "spec.exporter.maxConfigSize",
            "positive size of at most 1Gi",
        ),
        (
            "a maxConfigSize above the operator's limit",
            with(|s| s["exporter"]["maxConfigSize"] = json!("2Gi")),
            "spec.exporter.maxConfigSize",
            "positive size of at most 1Gi",
        ),
        (
            "a maxPayload below Kong's minimum",
            with(|s| s["exporter"]["controlPlane"]["maxPayload"] = json!("3Mi")),
            "spec.exporter.controlPlane.maxPayload",
            "between 4Mi",
        ),
    ]
}

/// Issue 13 point 6: every cross-field rule is refused by the apiserver at admission, so
/// `kubectl apply --dry-run=server` already says what is wrong; and `validate()` refuses
/// the same spec naming the same field (for objects stored before the rule existed).
#[tokio::test]
async fn every_cross_field_rule_is_refused_at_admission_and_by_validate() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-cross").await.unwrap();
    for (what, spec, field, words) in cross_field_cases() {
        let msg = dry_run_rejection(&client, &ns, spec.clone()).await;
        assert!(
            msg.contains(&format!("{field}:")) && msg.contains(words),
            "{what}: expected {field}: ...{words}..., got: {msg}"
        );
        let typed: kong_fallback_operator::api::FallbackConfigPolicySpec =
            serde_json::from_value(spec).unwrap();
        let problems = kong_fallback_operator::api::validate(&typed);
        assert!(
            problems.iter().any(|p| p.field.starts_with(field)),
            "{what}: validate() does not name {field}: {problems:?}"
        );
    }
    // Nothing was stored: they were dry runs, and refused.
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client, &ns);
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// The same through the real `kubectl apply --dry-run=server`: a good policy is accepted
/// (and not stored), a bad one is refused with the rule's message.
#[tokio::test]
async fn kubectl_apply_dry_run_server_refuses_a_bad_policy_and_accepts_a_good_one() {
    let (env, client) = setup().await;
    let ns = env.namespace("api-dryrun").await.unwrap();
    let dir = std::env::temp_dir().join(kfo_testenv::unique_name("kfo-dryrun"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, spec: serde_json::Value| {
        let path = dir.join(format!("{name}.yaml"));
        let obj = json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1",
            "kind": "FallbackConfigPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        });
        std::fs::write(&path, serde_norway::to_string(&obj).unwrap()).unwrap();
        path.display().to_string()
    };
    let good = write("good", valid_spec());
    let out = env
        .kubectl(&["apply", "--dry-run=server", "-f", &good])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(server dry run)"));

    let bad = write(
        "bad",
        with(|s| {
            s["storage"]
                .as_object_mut()
                .unwrap()
                .remove("writeCredentials");
        }),
    );
    let out = env
        .kubectl(&["apply", "--dry-run=server", "-f", &bad])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains(
            "spec.storage.writeCredentials: Required value: storage.writeCredentials is required"
        ),
        "{stderr}"
    );
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client, &ns);
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

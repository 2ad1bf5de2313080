//! Generated files stay in step with the code: the CRD in `crds/` and in the Helm chart is
//! exactly what `kong-fallback-operator crd` prints, and the chart passes the real helm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const CRD_FILE: &str = "crds/fallbackconfigpolicies.fallback.kong-dp.io.yaml";
const CHART: &str = "charts/kong-fallback-operator";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_crd_file_is_what_the_binary_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, kong_fallback_operator::api::crd_yaml().unwrap());
    assert!(
        read(CRD_FILE) == printed,
        "{CRD_FILE} is stale: run `make generate` and commit the result"
    );
}

#[test]
fn the_chart_carries_the_same_crd() {
    let chart_crd = format!("{CHART}/crds/fallbackconfigpolicies.fallback.kong-dp.io.yaml");
    assert!(
        read(&chart_crd) == read(CRD_FILE),
        "{chart_crd} differs from {CRD_FILE}: run `make generate`"
    );
}

#[test]
fn helm_lints_and_renders_the_chart() {
    let helm = kfo_testenv::binary("helm").unwrap();
    let lint = Command::new(&helm)
        .args(["lint", "--strict", CHART])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint failed:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let tpl = Command::new(&helm)
        .args([
            "template",
            "kfo",
            CHART,
            "--include-crds",
            "--namespace",
            "kong-fallback",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        tpl.status.success(),
        "{}",
        String::from_utf8_lossy(&tpl.stderr)
    );
    let rendered = String::from_utf8(tpl.stdout).unwrap();
    assert!(
        rendered.contains("kind: CustomResourceDefinition"),
        "{rendered}"
    );
    assert!(
        rendered.contains("name: fallbackconfigpolicies.fallback.kong-dp.io"),
        "{rendered}"
    );
}

fn helm_template(args: &[&str]) -> std::process::Output {
    let helm = kfo_testenv::binary("helm").unwrap();
    Command::new(&helm)
        .args(["template", "kfo", CHART, "--namespace", "kfo"])
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn a_typo_in_values_fails_at_install_and_cert_manager_is_an_option() {
    let typo = helm_template(&["--set", "webhok.enabled=false"]);
    assert!(!typo.status.success(), "a misspelt value was accepted");
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("webhok"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );
    let bad = helm_template(&["--set", "webhook.failurePolicy=Sometimes"]);
    assert!(
        !bad.status.success(),
        "an unknown failurePolicy was accepted"
    );

    let cm = helm_template(&["--set", "webhook.certManager.enabled=true"]);
    assert!(
        cm.status.success(),
        "{}",
        String::from_utf8_lossy(&cm.stderr)
    );
    let rendered = String::from_utf8(cm.stdout).unwrap();
    assert!(rendered.contains("kind: Certificate"), "{rendered}");
    assert!(
        rendered
            .contains("cert-manager.io/inject-ca-from: kfo/kfo-kong-fallback-operator-webhook-tls")
    );
    assert!(rendered.contains("--webhook-cert-dir="));
    assert!(
        !rendered.contains("resources: [\"secrets\"]\n    verbs: [\"create\"]"),
        "no Secret-writing Role with cert-manager"
    );

    // NB: a failed render prints nothing, and nothing "does not contain" anything: the
    // exit status and a rendered Deployment come first.
    let off = helm_template(&["--set", "webhook.enabled=false"]);
    assert!(
        off.status.success(),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    let docs = yaml_documents(&off.stdout);
    assert!(
        docs.iter().any(|d| d["kind"] == "Deployment"),
        "no Deployment rendered with webhook.enabled=false:\n{}",
        String::from_utf8_lossy(&off.stdout)
    );
    let rendered = String::from_utf8(off.stdout).unwrap();
    assert!(!rendered.contains("MutatingWebhookConfiguration"));
    assert!(!rendered.contains("mutatingwebhookconfigurations"));
}

/// Every YAML document of a render; a document that does not parse fails the test.
fn yaml_documents(rendered: &[u8]) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_slice(rendered)
        .map(|d| {
            <serde_json::Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("a rendered document does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_chart_runs_cleanup_before_uninstall_unless_told_not_to() {
    let on = helm_template(&[]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let docs = yaml_documents(&on.stdout);
    let job = docs
        .iter()
        .find(|d| d["kind"] == "Job")
        .unwrap_or_else(|| panic!("no hook Job in:\n{}", String::from_utf8_lossy(&on.stdout)));
    let annotations = &job["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/hook"], "pre-delete");
    assert_eq!(
        annotations["helm.sh/hook-delete-policy"],
        "before-hook-creation,hook-succeeded"
    );
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let (pod, operator) = (
        &job["spec"]["template"]["spec"],
        &deployment["spec"]["template"]["spec"],
    );
    assert_eq!(pod["serviceAccountName"], operator["serviceAccountName"]);
    assert_eq!(pod["securityContext"], operator["securityContext"]);
    let (c, oc) = (&pod["containers"][0], &operator["containers"][0]);
    assert_eq!(c["image"], oc["image"]);
    assert_eq!(c["securityContext"], oc["securityContext"]);
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "cleanup");
    for arg in [
        "--stop-deployment=kfo-kong-fallback-operator",
        "--delete-webhook-configuration",
        "--webhook-configuration=kfo-kong-fallback-operator",
    ] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    // NB: the Job's pod must not match the Deployment's selector, or the cleanup would
    // wait for itself to go.
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    let labels = job["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    assert!(
        !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "{labels:?}"
    );
    // One namespace watched: one namespace cleaned.
    let one = helm_template(&["--set", "watchNamespace=kong"]);
    assert!(one.status.success());
    assert!(String::from_utf8_lossy(&one.stdout).contains("- --namespace=kong"));

    let off = helm_template(&["--set", "cleanupOnUninstall=false"]);
    assert!(
        off.status.success(),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    assert!(
        !yaml_documents(&off.stdout)
            .iter()
            .any(|d| d["kind"] == "Job"),
        "a hook Job with cleanupOnUninstall=false"
    );
}

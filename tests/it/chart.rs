//! The Helm chart across value combinations: each passes `helm lint --strict`, renders with
//! `helm template` to what its values ask for, and is accepted by the real kube-apiserver
//! (`kubectl apply --server-side --dry-run=server`). The `helm test` hook's command works
//! against the operator's real HTTP server (no kubelet here runs the pod itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use kfo_testenv::kube;
use serde_json::{Value, json};

const CHART: &str = "charts/kong-fallback-operator";
const RELEASE: &str = "kfo-chart";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A value combination: a name, `--set` values and `--set-json` values.
struct Case {
    name: &'static str,
    set: &'static [&'static str],
    set_json: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "defaults",
        set: &[],
        set_json: &[],
    },
    Case {
        name: "all extras",
        set: &[
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=prometheus",
            "grafanaDashboard.enabled=true",
            "networkPolicy.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "rbac.rollout=true",
            "watchNamespace=default",
        ],
        set_json: &[
            r#"extraArgs=["--max-config-size=32Mi"]"#,
            r#"extraEnv=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"}]"#,
            r#"extraVolumes=[{"name":"ca","configMap":{"name":"corp-ca"}}]"#,
            r#"extraVolumeMounts=[{"name":"ca","mountPath":"/etc/corp-ca","readOnly":true}]"#,
            r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway"},{"maxSkew":1,"topologyKey":"kubernetes.io/hostname","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"custom":"x"}}}]"#,
            r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
        ],
    },
    Case {
        name: "one replica",
        set: &["replicaCount=1"],
        set_json: &[],
    },
    Case {
        name: "two replicas",
        set: &["replicaCount=2", "podDisruptionBudget.minAvailable=1"],
        set_json: &[],
    },
    Case {
        name: "hostNetwork",
        set: &[
            "hostNetwork=true",
            "webhook.port=10443",
            "metrics.port=10080",
        ],
        set_json: &[],
    },
    Case {
        name: "networkPolicy",
        set: &["networkPolicy.enabled=true"],
        set_json: &[],
    },
    Case {
        name: "image.digest",
        set: &[
            "image.repository=registry.example/kfo",
            "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ],
        set_json: &[],
    },
    Case {
        name: "fullnameOverride",
        set: &["fullnameOverride=fallback-op"],
        set_json: &[],
    },
    Case {
        name: "subchart globals",
        set: &["global.imageRegistry=registry.example"],
        set_json: &[r#"global.imagePullSecrets=[{"name":"pull"}]"#],
    },
    Case {
        name: "no webhook",
        set: &["webhook.enabled=false", "testHook.enabled=false"],
        set_json: &[],
    },
];

fn args(case: &Case) -> Vec<String> {
    let mut args = Vec::new();
    for s in case.set {
        args.extend(["--set".to_owned(), (*s).to_owned()]);
    }
    for s in case.set_json {
        args.extend(["--set-json".to_owned(), (*s).to_owned()]);
    }
    args
}

fn helm(args: &[String]) -> std::process::Output {
    let helm = kfo_testenv::binary("helm").unwrap();
    Command::new(&helm)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// `helm template` of `case` into `namespace`: the YAML text and its documents.
fn render(case: &Case, namespace: &str) -> (String, Vec<Value>) {
    let mut a: Vec<String> = ["template", RELEASE, CHART, "--namespace", namespace]
        .map(String::from)
        .to_vec();
    a.extend(args(case));
    let out = helm(&a);
    assert!(
        out.status.success(),
        "helm template ({}): {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_norway::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn deployment_pod(docs: &[Value]) -> &Value {
    &find(docs, "Deployment").unwrap()["spec"]["template"]["spec"]
}

#[test]
fn helm_lint_strict_passes_for_every_value_combination() {
    for case in CASES {
        let mut a: Vec<String> = ["lint", "--strict", CHART].map(String::from).to_vec();
        a.extend(args(case));
        let out = helm(&a);
        assert!(
            out.status.success(),
            "helm lint --strict ({}):\n{}{}",
            case.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn each_value_combination_renders_what_it_asks_for() {
    let ns = "kfo";
    let case = |name: &str| CASES.iter().find(|c| c.name == name).unwrap();

    let (_, d) = render(case("defaults"), ns);
    assert!(
        find(&d, "PodDisruptionBudget").is_some(),
        "2 replicas get a PDB"
    );
    for kind in [
        "NetworkPolicy",
        "PrometheusRule",
        "ConfigMap",
        "ServiceMonitor",
    ] {
        assert!(find(&d, kind).is_none(), "{kind} is off by default");
    }
    let pod = deployment_pod(&d);
    assert!(pod["hostNetwork"].is_null());
    assert_eq!(
        pod["containers"][0]["image"],
        "kong-fallback-operator:0.1.0"
    );
    // The helm test hook asks the metrics Service for /readyz.
    let test = d
        .iter()
        .find(|x| x["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("a helm test hook");
    assert_eq!(test["kind"], "Pod");
    let service = d
        .iter()
        .find(|x| x["kind"] == "Service" && x["spec"]["ports"][0]["name"] == "http")
        .unwrap();
    let url = format!(
        "--url=http://{}.{ns}.svc:{}/readyz",
        service["metadata"]["name"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(
        test["spec"]["containers"][0]["args"],
        json!(["probe", url, "--timeout=60"])
    );
    assert_eq!(test["spec"]["securityContext"]["runAsNonRoot"], true);

    let (_, d) = render(case("one replica"), ns);
    assert!(
        find(&d, "PodDisruptionBudget").is_none(),
        "a PDB with one replica would block every drain"
    );
    let (_, d) = render(case("two replicas"), ns);
    assert_eq!(
        find(&d, "PodDisruptionBudget").unwrap()["spec"]["minAvailable"],
        1
    );

    let (_, d) = render(case("all extras"), ns);
    let pod = deployment_pod(&d);
    let c = &pod["containers"][0];
    let args = c["args"].as_array().unwrap();
    assert_eq!(args.last().unwrap(), "--max-config-size=32Mi", "{args:?}");
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"}))
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "ca", "configMap": {"name": "corp-ca"}}])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": true}])
    );
    let spread = pod["topologySpreadConstraints"].as_array().unwrap();
    assert_eq!(
        spread[0]["labelSelector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "kong-fallback-operator", "app.kubernetes.io/instance": RELEASE}),
        "a constraint without a selector gets the pods' own"
    );
    assert_eq!(
        spread[1]["labelSelector"]["matchLabels"],
        json!({"custom": "x"})
    );
    // The PrometheusRule is the rules file, unchanged.
    let rule = find(&d, "PrometheusRule").unwrap();
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let file: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join(crate::monitoring::RULES)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        rule["spec"], file,
        "the PrometheusRule differs from the rules file"
    );
    let cm = d
        .iter()
        .find(|x| x["kind"] == "ConfigMap" && x["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["kong-fallback-operator.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(crate::monitoring::DASHBOARD)).unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard, file);

    let (_, d) = render(case("hostNetwork"), ns);
    let pod = deployment_pod(&d);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let ports = &pod["containers"][0]["ports"];
    assert_eq!(
        ports,
        &json!([{"name": "http", "containerPort": 10080}, {"name": "webhook", "containerPort": 10443}])
    );
    assert!(
        pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--webhook-addr=0.0.0.0:10443"))
    );

    let (_, d) = render(case("networkPolicy"), ns);
    let np = find(&d, "NetworkPolicy").unwrap();
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"],
        find(&d, "Deployment").unwrap()["spec"]["selector"]["matchLabels"]
    );
    let ports: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["ports"][0]["port"])
        .collect();
    assert_eq!(ports, [&json!(9443), &json!(8080)]);

    let (_, d) = render(case("image.digest"), ns);
    let image = format!("registry.example/kfo@{DIGEST}");
    assert_eq!(deployment_pod(&d)["containers"][0]["image"], image.as_str());
    for x in &d {
        let spec = if x["kind"] == "Job" {
            &x["spec"]["template"]["spec"]
        } else {
            &x["spec"]
        };
        for c in spec["containers"].as_array().into_iter().flatten() {
            assert_eq!(c["image"], image.as_str(), "{}", x["metadata"]["name"]);
        }
    }

    let (_, d) = render(case("fullnameOverride"), ns);
    for x in &d {
        let name = x["metadata"]["name"].as_str().unwrap();
        if x["kind"] == "CustomResourceDefinition" {
            continue;
        }
        assert!(
            name.starts_with("fallback-op"),
            "{} {name} does not carry fullnameOverride",
            x["kind"]
        );
    }
}

#[test]
fn a_value_outside_the_schema_is_refused_but_globals_are_accepted() {
    let typo = Case {
        name: "typo",
        set: &["hostNetwrk=true"],
        set_json: &[],
    };
    let mut a: Vec<String> = ["template", RELEASE, CHART].map(String::from).to_vec();
    a.extend(args(&typo));
    assert!(!helm(&a).status.success(), "a misspelt value was accepted");
    let bad_digest = Case {
        name: "bad digest",
        set: &["image.digest=latest"],
        set_json: &[],
    };
    let mut a: Vec<String> = ["template", RELEASE, CHART].map(String::from).to_vec();
    a.extend(args(&bad_digest));
    assert!(
        !helm(&a).status.success(),
        "a digest without sha256: was accepted"
    );
    // "subchart globals" renders (checked with the others).
    render(
        CASES.iter().find(|c| c.name == "subchart globals").unwrap(),
        "kfo",
    );
}

/// The Prometheus Operator's kinds the chart can render, as CRDs that accept any content:
/// the apiserver then checks their metadata (names, namespaces, labels); the
/// PrometheusRule's content is the rules file promtool checks (tests/it/monitoring.rs).
fn monitoring_crd(kind: &str, plural: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    })
}

#[tokio::test]
async fn the_apiserver_accepts_every_value_combination() {
    let env = kube().await;
    for (kind, plural) in [
        ("PrometheusRule", "prometheusrules"),
        ("ServiceMonitor", "servicemonitors"),
    ] {
        let crd = serde_json::from_value(monitoring_crd(kind, plural)).unwrap();
        env.install_crd(&crd).await.unwrap();
    }
    let dir = std::env::temp_dir().join(kfo_testenv::unique_name("chart-renderings"));
    std::fs::create_dir_all(&dir).unwrap();
    for case in CASES {
        let ns = env.namespace("chart").await.unwrap();
        let (text, docs) = render(case, &ns);
        assert!(docs.len() > 5, "{}: {} documents", case.name, docs.len());
        let file = dir.join(format!("{}.yaml", case.name.replace(' ', "-")));
        std::fs::write(&file, &text).unwrap();
        let out = env
            .kubectl(&[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=chart-test",
                "-f",
                file.to_str().unwrap(),
            ])
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server ({}) failed:\n{}{}",
            case.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let applied = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            applied.matches("(server dry run)").count(),
            docs.len(),
            "{}: not every object was applied:\n{applied}",
            case.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `helm test` pod runs `kong-fallback-operator probe --url .../readyz`: it waits for
/// readiness, and fails when the operator never gets ready. Run here against the operator's
/// own HTTP server, since no kubelet runs pods in the test environment.
#[tokio::test]
async fn the_test_hooks_probe_passes_only_once_the_operator_is_ready() {
    use kong_fallback_operator::http::Health;
    let health = std::sync::Arc::new(Health::new(&["caches"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("--url=http://{}/readyz", listener.local_addr().unwrap());
    tokio::spawn(kong_fallback_operator::http::serve(
        listener,
        std::sync::Arc::default(),
        health.clone(),
    ));
    let probe = |timeout: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
            .args(["probe", &url, timeout])
            .output()
    };
    let out = probe("--timeout=1").await.unwrap();
    assert!(!out.status.success(), "passed while not ready");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && err.contains("caches"), "{err}");

    let waiting = tokio::spawn(probe("--timeout=30"));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    health.set("caches", true);
    let out = waiting.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Helm never upgrades `crds/`: an operator started against the CRD of an older release
/// refuses to run, names the fields that CRD lacks and says how to upgrade it; once the CRD
/// is upgraded it starts. A newer CRD (a downgrade) is accepted.
#[tokio::test]
async fn the_operator_refuses_an_older_crd_and_says_how_to_upgrade_it() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kong_fallback_operator::controller;
    use kube::CustomResourceExt;
    use kube::api::{Api, Patch, PatchParams};

    let env = kube().await;
    // NB: a cluster of its own: the shared one must keep the current CRD.
    let cluster = env.empty_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = async |crd: &Value| {
        crds.patch(
            FallbackConfigPolicy::crd_name(),
            &PatchParams::apply("chart-test").force(),
            &Patch::Apply(crd),
        )
        .await
        .unwrap();
    };
    // An "older release": today's CRD without spec.exporter.minInterval.
    let current = serde_json::to_value(FallbackConfigPolicy::crd()).unwrap();
    let mut older = current.clone();
    let exporter = &mut older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["exporter"]["properties"];
    assert!(
        exporter
            .as_object_mut()
            .unwrap()
            .remove("minInterval")
            .is_some(),
        "the CRD has no spec.exporter.minInterval any more: pick another field"
    );
    apply(&older).await;

    let e = controller::check_crd(&client).await.unwrap_err();
    assert!(
        matches!(&e, controller::Error::CrdOutdated { missing } if missing == &["spec.exporter.minInterval"]),
        "{e:?}"
    );
    // The binary's own start says it, and exits.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kong-fallback-operator"))
            .args(["run", "--http-addr=127.0.0.1:0", "--namespace=kong"])
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .output(),
    )
    .await
    .expect("the operator kept running with an older CRD")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for said in [
        "older than this operator",
        "spec.exporter.minInterval",
        "kubectl apply --server-side",
    ] {
        assert!(err.contains(said), "{said:?} not in:\n{err}");
    }

    // Upgraded, the check passes (once Established); a newer CRD passes too.
    apply(&current).await;
    let mut newer = current.clone();
    newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["futureField"] = json!({"type": "string"});
    for crd in [&current, &newer] {
        apply(crd).await;
        crate::wait::until("the CRD check to pass", async || {
            controller::check_crd(&client).await.ok()
        })
        .await;
    }
}

/// The README's Helm command, run for real against the test apiserver: `helm install`
/// (with `--create-namespace`) then `helm upgrade` of the same release. No kubelet runs the
/// pods here; what helm creates is checked from the apiserver.
#[tokio::test]
async fn the_readmes_helm_install_and_an_upgrade_work_against_the_apiserver() {
    let env = kube().await;
    let ns = kfo_testenv::unique_name("helm-readme");
    let release = kfo_testenv::unique_name("kfo");
    let kubeconfig = env.kubeconfig_path().display().to_string();
    let run = |verb: &str, extra: &[&str]| {
        let mut a: Vec<String> = [
            verb,
            &release,
            CHART,
            "-n",
            &ns,
            "--kubeconfig",
            &kubeconfig,
            "--set",
            "image.repository=registry.invalid/kong-fallback-operator",
            "--set",
            "image.tag=0.1.0",
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = helm(&a);
        assert!(
            out.status.success(),
            "helm {verb}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("install", &["--create-namespace"]);
    let deployment = async |field: &str| {
        crate::cluster::kubectl_ok(
            env,
            &[
                "get",
                "deployment",
                "-n",
                &ns,
                "-l",
                "app.kubernetes.io/name=kong-fallback-operator",
                "-o",
                &format!("jsonpath={field}"),
            ],
        )
        .await
    };
    assert_eq!(
        deployment("{.items[0].spec.template.spec.containers[0].image}").await,
        "registry.invalid/kong-fallback-operator:0.1.0"
    );
    run("upgrade", &["--set", "replicaCount=3"]);
    assert_eq!(deployment("{.items[0].spec.replicas}").await, "3");
    // NB: without its pre-delete hook: the cleanup Job needs a kubelet to run (tested in
    // cleanup.rs by running its command); helm would wait for it to its timeout.
    let out = helm(&[
        "uninstall".into(),
        "--no-hooks".into(),
        release.clone(),
        "-n".into(),
        ns.clone(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

//! What Prometheus and Grafana read: the alerting rules (one file, the chart's
//! `files/alerts.yaml`) pass `promtool check rules`, every alert fires and stays quiet in
//! `promtool test rules`, and the rules, their unit tests and the Grafana dashboard name
//! only metrics the operator's registry (src/metrics.rs) really exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

pub(crate) const RULES: &str = "charts/kong-fallback-operator/files/alerts.yaml";
const RULE_TESTS: &str = "tests/prometheus/alerts.test.yaml";
pub(crate) const DASHBOARD: &str = "charts/kong-fallback-operator/files/dashboard.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel} does not parse: {e}"))
}

fn promtool(args: &[&str]) -> std::process::Output {
    let promtool = kfo_testenv::binary("promtool").unwrap();
    Command::new(&promtool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

/// Every alerting rule in the rules file: (name, expression).
pub(crate) fn alerts(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_owned(), rule["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

/// The names of the series the operator exposes: the `# TYPE` lines of its registry's
/// encoding once every reporting method has been called (an empty family is not encoded),
/// turned into the sample names Prometheus stores (`_total` for counters, `_bucket`, `_sum`,
/// `_count` for histograms). A metric added later and left out here fails the check below
/// when a rule uses it, never the other way round.
fn exported_series() -> BTreeSet<String> {
    use kong_fallback_operator::metrics::{ExportEvent, ExportLabels, Metrics};
    use std::time::{Duration, SystemTime};
    let m = Metrics::new();
    let l = ExportLabels {
        namespace: "kong".into(),
        policy: "prod".into(),
        version: "3.6.1.4".into(),
    };
    for event in [
        ExportEvent::Connected,
        ExportEvent::Withheld,
        ExportEvent::Disconnected { reason: "connect" },
        ExportEvent::RejectedFrame {
            reason: "too_large",
        },
        ExportEvent::Skipped,
        ExportEvent::Exported {
            bytes: 1,
            at: SystemTime::now(),
            latency: Duration::from_millis(1),
        },
        ExportEvent::Failed { reason: "network" },
        ExportEvent::Fenced,
    ] {
        m.observe(&l, event);
    }
    m.leading("kong", "prod", true);
    m.pods_not_injected("kong", "prod", Some(1));
    m.webhook_certificate(Some(SystemTime::now()));
    m.webhook("injected", Duration::from_millis(1));
    m.reconciled("policy", Duration::from_millis(1), Some("kube"));
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    assert!(names.len() > 15, "too few metrics read from\n{text}");
    names
}

/// The metric names a PromQL expression selects: what is left once strings, label matchers
/// `{...}`, ranges `[...]`, grouping label lists (`by (...)`, `on (...)`, ...), numbers,
/// function calls and operator keywords are taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "atan2",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Blank out strings, and {...} and [...] with the strings inside them.
    let mut plain = String::with_capacity(expr.len());
    let (mut string, mut bracket, mut escaped): (Option<char>, Option<char>, bool) =
        (None, None, false);
    for c in expr.chars() {
        if let Some(q) = string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                string = None;
            }
            plain.push(' ');
            continue;
        }
        match c {
            '"' | '\'' | '`' => string = Some(c),
            '{' if bracket.is_none() => bracket = Some('}'),
            '[' if bracket.is_none() => bracket = Some(']'),
            c if Some(c) == bracket => bracket = None,
            c if bracket.is_none() => {
                plain.push(c);
                continue;
            }
            _ => {}
        }
        plain.push(' ');
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        if skip_list {
            // The label list after a grouping keyword.
            if c == ')' {
                skip_list = false;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            // A number (or a duration such as 5m, or 1e3): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            // NB: `max by (l) (x)`: an aggregation may put its grouping before the parens.
            let next: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let called = (j < chars.len() && chars[j] == '(')
                || (!GROUPING.contains(&word.as_str()) && (next == "by" || next == "without"));
            if GROUPING.contains(&word.as_str()) && called {
                skip_list = true;
                i = j + 1;
            } else if !called && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn promql_names_are_read_without_functions_labels_or_keywords() {
    let names = metric_names(
        r#"time() - max by (namespace, policy) (a_b{x="y{z}",w=~"$v"}) > 3600
        and on (namespace) sum without (pod) (rate(c_total[$__rate_interval] offset 5m)) > 1e3
        or histogram_quantile(0.95, sum by (le) (rate(d_bucket[5m]))) * 14 * 86400 unless bool e"#,
    );
    assert_eq!(
        names,
        ["a_b", "c_total", "d_bucket", "e"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn the_alerting_rules_pass_promtool_check_rules() {
    let out = promtool(&["check", "rules", RULES]);
    assert!(
        out.status.success(),
        "promtool check rules {RULES}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_alert_fires_and_stays_quiet_in_promtool_unit_tests() {
    // Each alert has a case where it fires and one where it must not.
    let tests = yaml(RULE_TESTS);
    assert_eq!(
        tests["rule_files"][0].as_str().map(|f| {
            Path::new(RULE_TESTS)
                .parent()
                .unwrap()
                .join(f)
                .components()
                .fold(std::path::PathBuf::new(), |mut p, c| {
                    match c {
                        std::path::Component::ParentDir => {
                            p.pop();
                        }
                        c => p.push(c),
                    }
                    p
                })
        }),
        Some(RULES.into()),
        "{RULE_TESTS} must test the chart's own rules file"
    );
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for group in tests["tests"].as_array().unwrap() {
        for case in group["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            match case["exp_alerts"].as_array().map(Vec::len) {
                Some(0) | None => quiet.insert(name),
                Some(_) => fires.insert(name),
            };
        }
    }
    for (alert, _) in alerts(&yaml(RULES)) {
        assert!(
            fires.contains(&alert),
            "no test in {RULE_TESTS} where {alert} fires"
        );
        assert!(
            quiet.contains(&alert),
            "no test in {RULE_TESTS} where {alert} stays quiet"
        );
    }

    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert!(
        out.status.success(),
        "promtool test rules {RULE_TESTS}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_their_tests_and_the_dashboard_use_only_metrics_the_operator_exports() {
    let exported = exported_series();
    let mut used: Vec<(String, String)> = Vec::new(); // (where, name)
    for (alert, expr) in alerts(&yaml(RULES)) {
        let names = metric_names(&expr);
        assert!(
            names.iter().any(|n| n.starts_with("kong_fallback_")),
            "{alert} uses none of the operator's metrics: {expr}"
        );
        used.extend(names.into_iter().map(|n| (format!("{RULES}: {alert}"), n)));
    }
    for group in yaml(RULE_TESTS)["tests"].as_array().unwrap() {
        for series in group["input_series"].as_array().unwrap() {
            let s = series["series"].as_str().unwrap();
            let name = s.split('{').next().unwrap().trim().to_owned();
            used.push((format!("{RULE_TESTS}: input series"), name));
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap())
            .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() > 10, "too few queries found in {DASHBOARD}");
    for (title, expr) in exprs {
        used.extend(
            metric_names(&expr)
                .into_iter()
                .map(|n| (format!("{DASHBOARD}: {title}"), n)),
        );
    }
    // The dashboard's variables query label values of a metric too.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["definition"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(m, _)| m)
                .unwrap_or(q);
            used.extend(
                metric_names(inner)
                    .into_iter()
                    .map(|n| (format!("{DASHBOARD}: variable"), n)),
            );
        }
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|(_, name)| !exported.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics the operator does not export: {unknown:#?}\nexported: {exported:#?}"
    );
    // And the two metrics the alerts needed are there.
    for name in [
        "kong_fallback_pods_not_injected",
        "kong_fallback_webhook_certificate_expiry_timestamp_seconds",
    ] {
        assert!(used.iter().any(|(_, n)| n == name), "{name} is not used");
    }
}

/// Every panel's (title, PromQL expression), rows and nested panels included.
fn dashboard_exprs(v: &Value, out: &mut Vec<(String, String)>) {
    for panel in v["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((title.clone(), t["expr"].as_str().unwrap().to_owned()));
        }
        dashboard_exprs(panel, out);
    }
}

#[test]
fn the_dashboard_queries_prometheus_through_its_datasource_variable() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap()).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} has a fixed data source",
            panel["title"]
        );
    }
}

/// The controller reports `kong_fallback_pods_not_injected` from the real pod cache: a pod
/// the policy selects that started without the injection (no webhook runs here) counts,
/// and stops counting once it is gone.
#[tokio::test]
async fn the_controller_counts_pods_without_the_injection_in_the_metrics() {
    use k8s_openapi::api::core::v1::Pod;
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kong_fallback_operator::controller;
    use kube::CustomResourceExt;
    use kube::api::{Api, PostParams};
    use serde_json::json;

    let env = kfo_testenv::kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("pods-metric").await.unwrap();
    let pp = PostParams::default();
    let policy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "gcs://pods-metric/kong", "readCredentials": {"ambient": true}},
            "exporter": {"mode": "None"}
        }),
    );
    Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(&pp, &policy)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dp-0", "labels": {"app": "kong-dp"}},
        "spec": {"containers": [{"name": "proxy", "image": "kong:3.9.1"}]}
    }))
    .unwrap();
    pods.create(&pp, &pod).await.unwrap();
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        ..controller::Settings::new("kfo-pods-metric")
    };
    let metrics = settings.metrics.clone();
    let running = tokio::spawn(controller::run(client.clone(), settings));
    let line = |n: u32| {
        format!(r#"kong_fallback_pods_not_injected{{namespace="{ns}",policy="prod"}} {n}"#)
    };
    crate::wait::until("one pod reported without the injection", async || {
        metrics.encode().contains(&line(1)).then_some(())
    })
    .await;
    pods.delete("dp-0", &Default::default()).await.unwrap();
    crate::wait::until("the count back to 0", async || {
        metrics.encode().contains(&line(0)).then_some(())
    })
    .await;
    running.abort();
}

/// The webhook reports its serving certificate's expiry once it serves: the notAfter of the
/// certificate it made (valid for an hour here), and nothing before.
#[tokio::test]
async fn the_webhook_reports_when_its_certificate_expires() {
    use kong_fallback_operator::api::FallbackConfigPolicy;
    use kong_fallback_operator::controller;
    use kong_fallback_operator::webhook::registration;
    use kube::CustomResourceExt;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let env = kfo_testenv::kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("cert-metric").await.unwrap();
    let configuration = kfo_testenv::unique_name("kfo-cert-metric");
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(crate::cluster::local_webhook(
            &ns,
            "webhook-tls",
            &configuration,
            registration::FailurePolicy::Ignore,
            Duration::from_secs(1),
        )),
        ..controller::Settings::new("kfo-cert-metric")
    };
    let metrics = settings.metrics.clone();
    let name = "kong_fallback_webhook_certificate_expiry_timestamp_seconds{} ";
    assert!(!metrics.encode().contains(name));
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let running = tokio::spawn(controller::run(client.clone(), settings));
    let expiry: f64 = crate::wait::until("the certificate's expiry in the metrics", async || {
        let text = metrics.encode();
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().parse().ok()
    })
    .await;
    // local_webhook makes certificates valid for an hour (seconds of notAfter only).
    assert!(
        (expiry - (started + 3600.0)).abs() < 60.0,
        "expiry {expiry}, started {started}"
    );
    running.abort();
    let _ = kube::Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(client)
        .delete(&configuration, &Default::default())
        .await;
}

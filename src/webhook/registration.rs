//! The `MutatingWebhookConfiguration`: built here (pure) and applied with server-side
//! apply under the operator's field manager, so GitOps tools that own the rest of the
//! object see the caBundle and namespace list as another manager's fields.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::FallbackConfigPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

/// The webhook's name inside the configuration.
pub const WEBHOOK_NAME: &str = "inject.fallback.kong-dp.io";
/// Matches no namespace: the selector used while no namespace has a policy.
const NO_NAMESPACE: &str = "fallback-kong-dp-io-no-policy";

/// How the apiserver reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// In cluster: a Service in front of the operator's replicas.
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// Out of cluster: a URL (`https://host:port/mutate`).
    Url(String),
}

/// `Ignore` (default: an outage never blocks a Kong pod) or `Fail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    Ignore,
    Fail,
}

/// `s` as a single-quoted CEL string literal. Validation already limits label keys, values
/// and namespaces to characters that need no escaping; this is the second line of defence,
/// since one malformed expression makes the apiserver refuse the whole registration.
fn cel_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A CEL expression true for a pod whose labels `selector` matches (`None` for an empty
/// selector, which claims nothing).
pub fn selector_cel(selector: &LabelSelector) -> Option<String> {
    let l = "object.metadata.labels";
    let list = |vs: &Option<Vec<String>>| {
        let items: Vec<String> = vs.iter().flatten().map(|v| cel_str(v)).collect();
        format!("[{}]", items.join(", "))
    };
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| {
            let (k, v) = (cel_str(k), cel_str(v));
            format!("({k} in {l} && {l}[{k}] == {v})")
        })
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let k = cel_str(&e.key);
        terms.push(match e.operator.as_str() {
            "In" => format!("({k} in {l} && {l}[{k}] in {})", list(&e.values)),
            "NotIn" => format!("(!({k} in {l}) || !({l}[{k}] in {}))", list(&e.values)),
            "Exists" => format!("({k} in {l})"),
            _ => format!("!({k} in {l})"),
        });
    }
    if terms.is_empty() {
        return None;
    }
    Some(format!("(has({l}) && {})", terms.join(" && ")))
}

/// The CEL condition that sends the webhook only pods some policy selects, in its namespace.
pub fn match_condition(policies: &[FallbackConfigPolicy]) -> String {
    let clauses: Vec<String> = policies
        .iter()
        .filter(|p| crate::api::validate(&p.spec).is_empty())
        .flat_map(|p| {
            let ns = p.namespace().unwrap_or_default();
            let selectors = std::iter::once(&p.spec.data_planes.selector)
                .chain(p.spec.backup.as_ref().map(|b| &b.selector));
            selectors
                .filter_map(selector_cel)
                .map(move |cel| format!("(request.namespace == {} && {cel})", cel_str(&ns)))
                .collect::<Vec<_>>()
        })
        .collect();
    if clauses.is_empty() {
        "false".to_owned()
    } else {
        clauses.join(" || ")
    }
}

/// The configuration for the cluster's `policies`. Pure.
pub fn configuration(
    name: &str,
    target: &Target,
    ca_bundle: &str,
    policies: &[FallbackConfigPolicy],
    failure_policy: FailurePolicy,
    timeout_seconds: i32,
) -> MutatingWebhookConfiguration {
    let namespaces: Vec<String> = policies
        .iter()
        .filter_map(|p| p.namespace())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let client = match target {
        Target::Service {
            namespace,
            name,
            port,
        } => {
            json!({"service": {"namespace": namespace, "name": name, "port": port, "path": super::PATH}})
        }
        Target::Url(url) => json!({"url": url}),
    };
    let values: Vec<&str> = if namespaces.is_empty() {
        vec![NO_NAMESPACE]
    } else {
        namespaces.iter().map(String::as_str).collect()
    };
    let value = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "kong-fallback-operator"}},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds,
            "reinvocationPolicy": "IfNeeded",
            "matchPolicy": "Equivalent",
            "failurePolicy": match failure_policy {
                FailurePolicy::Ignore => "Ignore",
                FailurePolicy::Fail => "Fail",
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                "scope": "Namespaced"
            }],
            // Only namespaces with a policy; never the operator's own pods.
            "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": values}
            ]},
            "objectSelector": {"matchExpressions": [
                {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["kong-fallback-operator"]}
            ]},
            // Only pods some policy selects: others never reach the webhook.
            "matchConditions": [{"name": "selected-by-a-policy", "expression": match_condition(policies)}],
            "clientConfig": client
        }]
    });
    // NB: the literal above is a valid MutatingWebhookConfiguration by construction.
    let mut config: MutatingWebhookConfiguration =
        serde_json::from_value(value).unwrap_or_default();
    if !ca_bundle.is_empty() {
        for w in config.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle =
                Some(k8s_openapi::ByteString(ca_bundle.as_bytes().to_vec()));
        }
    }
    config
}

/// Applies `config` (server-side apply, forced: the operator owns these fields) and returns
/// the resourceVersion the apiserver now holds. An apply that changes nothing keeps it.
pub async fn apply(
    client: &kube::Client,
    config: &MutatingWebhookConfiguration,
) -> Result<Option<String>, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = config.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(crate::api::FIELD_MANAGER).force(),
        &Patch::Apply(config),
    )
    .await
    .map(|c| c.resource_version())
}

/// Whether the registration must be applied again: the operator's view changed, or someone
/// else wrote the object since our last apply (a `helm upgrade`, an Argo CD sync or a Flux
/// reconcile puts the chart's inert template back). `live` is the watched resourceVersion,
/// `None` while unknown or after a deletion (which is left alone: an uninstall).
pub fn needs_apply(
    desired: &MutatingWebhookConfiguration,
    applied: Option<&(MutatingWebhookConfiguration, Option<String>)>,
    live: Option<&str>,
) -> bool {
    match applied {
        None => true,
        Some((config, version)) => {
            config != desired || live.is_some_and(|live| version.as_deref() != Some(live))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ns: &str, selector: serde_json::Value) -> FallbackConfigPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fallback.kong-dp.io/v1alpha1", "kind": "FallbackConfigPolicy",
            "metadata": {"name": "p", "namespace": ns},
            "spec": {
                "dataPlanes": {"selector": selector},
                "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
                "storage": {"url": "s3://fallback/kong", "region": "eu-west-1",
                            "readCredentials": {"ambient": true}, "writeCredentials": {"ambient": true}},
                "exporter": {"mode": "BackupPods"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_test_policy_is_valid() {
        let p = policy("kong", json!({"matchLabels": {"app": "kong-dp"}}));
        assert_eq!(crate::api::validate(&p.spec), []);
    }

    #[test]
    fn selectors_become_cel() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "kong-dp"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["edge", "core"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_cel(&s).unwrap(),
            "(has(object.metadata.labels) && ('app' in object.metadata.labels && object.metadata.labels['app'] == 'kong-dp') && ('tier' in object.metadata.labels && object.metadata.labels['tier'] in ['edge', 'core']) && !('canary' in object.metadata.labels))"
        );
        assert_eq!(selector_cel(&LabelSelector::default()), None);
        assert_eq!(match_condition(&[]), "false");
        let both = match_condition(&[policy("kong", json!({"matchLabels": {"app": "kong-dp"}}))]);
        assert!(
            both.starts_with("(request.namespace == 'kong' && "),
            "{both}"
        );
        assert_eq!(
            both.matches("request.namespace == 'kong'").count(),
            2,
            "importers and backups"
        );
    }

    #[test]
    fn quotes_and_backslashes_in_labels_cannot_break_out_of_cel_strings() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "a'b"},
            "matchExpressions": [{"key": "k\\", "operator": "In", "values": ["x') || true || ('"]}]
        }))
        .unwrap();
        let cel = selector_cel(&s).unwrap();
        assert!(cel.contains(r"== 'a\'b'"), "{cel}");
        assert!(cel.contains(r"('k\\' in "), "{cel}");
        assert!(cel.contains(r"['x\') || true || (\'']"), "{cel}");
        // Outside string literals only our own operators remain: no `|| true` escaped.
        let mut outside = String::new();
        let (mut quoted, mut escaped) = (false, false);
        for c in cel.chars() {
            match (quoted, escaped, c) {
                (true, false, '\\') => escaped = true,
                (true, true, _) => escaped = false,
                (_, false, '\'') => quoted = !quoted,
                (false, _, c) => outside.push(c),
                _ => {}
            }
        }
        assert!(!quoted, "unterminated string in {cel}");
        assert!(!outside.contains("true"), "{outside}");
    }

    #[test]
    fn the_configuration_is_create_only_idempotent_and_scoped_to_policy_namespaces() {
        let policies = [
            policy("kong", json!({"matchLabels": {"app": "kong-dp"}})),
            policy("edge", json!({"matchLabels": {"app": "kong-dp"}})),
        ];
        let c = configuration(
            "kong-fallback-operator",
            &Target::Service {
                namespace: "kfo".into(),
                name: "kfo-webhook".into(),
                port: 443,
            },
            "PEM",
            &policies,
            FailurePolicy::Ignore,
            5,
        );
        let w = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.admission_review_versions, ["v1"]);
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
        assert_eq!(w.timeout_seconds, Some(5));
        let rule = &w.rules.as_ref().unwrap()[0];
        assert_eq!(rule.operations.as_deref(), Some(&["CREATE".to_owned()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_owned()][..]));
        let ns = &w
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            ns.values.as_deref(),
            Some(&["edge".to_owned(), "kong".to_owned()][..])
        );
        let cond = &w.match_conditions.as_ref().unwrap()[0];
        assert!(cond.expression.contains("request.namespace == 'edge'"));
        let svc = w.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.path.as_deref()),
            ("kfo-webhook", Some("/mutate"))
        );
        assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
    }

    #[test]
    fn a_registration_someone_else_rewrote_is_applied_again() {
        let a = configuration(
            "x",
            &Target::Url("https://h/mutate".into()),
            "",
            &[],
            FailurePolicy::Ignore,
            5,
        );
        let b = configuration(
            "x",
            &Target::Url("https://h/mutate".into()),
            "CA",
            &[],
            FailurePolicy::Ignore,
            5,
        );
        let applied = (a.clone(), Some("10".to_owned()));
        assert!(needs_apply(&a, None, None), "never applied");
        assert!(
            !needs_apply(&a, Some(&applied), Some("10")),
            "ours, unchanged"
        );
        assert!(
            !needs_apply(&a, Some(&applied), None),
            "unknown or deleted: left alone"
        );
        assert!(
            needs_apply(&a, Some(&applied), Some("11")),
            "rewritten by another manager"
        );
        assert!(
            needs_apply(&b, Some(&applied), Some("10")),
            "our view changed"
        );
    }

    #[test]
    fn without_policies_no_namespace_is_selected() {
        let c = configuration(
            "x",
            &Target::Url("https://127.0.0.1:9443/mutate".into()),
            "",
            &[],
            FailurePolicy::Fail,
            5,
        );
        let w = &c.webhooks.as_ref().unwrap()[0];
        let ns = &w
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_expressions
            .as_ref()
            .unwrap()[0];
        assert_eq!(ns.values.as_deref(), Some(&[NO_NAMESPACE.to_owned()][..]));
        assert_eq!(
            w.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/mutate")
        );
        assert!(w.client_config.ca_bundle.is_none());
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
    }
}

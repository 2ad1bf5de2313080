//! What tests and benchmarks build on the test cluster: policies, the controller watching
//! one namespace, webhook settings for an operator running on this machine, and a
//! Deployment with the ReplicaSet and pod a controller-manager (absent here) would have
//! made. Included with `#[path]`.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kong_fallback_operator::webhook::{self, certs, registration};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// A policy named `name` with `spec` as a user writes it.
pub fn policy(name: &str, spec: serde_json::Value) -> FallbackConfigPolicy {
    serde_json::from_value(json!({
        "apiVersion": "fallback.kong-dp.io/v1alpha1",
        "kind": "FallbackConfigPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// `exporter.plugins` naming one plugin twice (`my-auth`, `my_auth`: Kong's names are
/// the same with `-` or `_`). The apiserver admits it (the CEL rule would exceed the cost
/// budget at 256 plugins) and `validate()` refuses it: an invalid spec that gets stored,
/// as one stored before a CEL rule existed would.
pub fn plugins_listed_twice() -> serde_json::Value {
    json!([
        {"name": "my-auth", "version": "1.0.0"},
        {"name": "my_auth", "version": "1.0.0"}
    ])
}

/// The controller, as replica `identity`, watching only namespace `ns` (abort to stop it).
pub fn run_controller(
    client: &Client,
    ns: &str,
    identity: &str,
) -> tokio::task::JoinHandle<Result<(), controller::Error>> {
    tokio::spawn(controller::run(
        client.clone(),
        controller::Settings {
            namespace: Some(ns.to_owned()),
            ..controller::Settings::new(identity)
        },
    ))
}

/// A condition of `p`'s status: (status, reason, message).
pub fn condition(p: &FallbackConfigPolicy, type_: &str) -> Option<(String, String, String)> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The reasons of the Events in namespace `ns`.
pub async fn event_reasons(client: &Client, ns: &str) -> Vec<String> {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// A loopback listener on a port of its own, for a server that names its port before
/// it runs. NB: a port found free and bound later can be taken in between by a test
/// running in parallel; a bound socket cannot.
pub fn loopback_listener() -> (std::net::SocketAddr, std::sync::Arc<std::net::TcpListener>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        listener.local_addr().unwrap(),
        std::sync::Arc::new(listener),
    )
}

/// The webhook on a loopback port of its own, registered by URL as `configuration`, with a
/// self-managed certificate for 127.0.0.1 in the Secret `secret_ns/secret`.
pub fn local_webhook(
    secret_ns: &str,
    secret: &str,
    configuration: &str,
    failure_policy: registration::FailurePolicy,
    cert_check: Duration,
) -> webhook::Settings {
    let (addr, listener) = loopback_listener();
    webhook::Settings {
        addr,
        listener: Some(listener),
        source: certs::Source::Managed {
            namespace: secret_ns.into(),
            name: secret.into(),
            hosts: vec!["127.0.0.1".into()],
            validity: Duration::from_secs(3600),
        },
        configuration: configuration.into(),
        target: registration::Target::Url(format!("https://{addr}/mutate")),
        failure_policy,
        timeout_seconds: 5,
        cert_check,
    }
}

/// The pod template of [`deployment_with_a_pod`]: a Kong data plane.
pub fn kong_dp_template() -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": "kong-dp"}},
        "spec": {"containers": [{"name": "proxy", "image": "kong/kong-gateway:3.6.1.4"}]}
    })
}

/// The Deployment `kong-dp` in `ns` with a ReplicaSet and one pod (app=kong-dp) it owns.
pub async fn deployment_with_a_pod(client: &Client, ns: &str) -> Api<Deployment> {
    let pp = PostParams::default();
    let template = kong_dp_template();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kong-dp"},
        "spec": {"selector": {"matchLabels": {"app": "kong-dp"}}, "template": template}
    }))
    .unwrap();
    let d = deployments.create(&pp, &deployment).await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "kong-dp-7d9f", "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "kong-dp",
            "uid": d.metadata.uid, "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "kong-dp"}}, "template": template}
    }))
    .unwrap();
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .create(&pp, &rs)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "kong-dp-7d9f-x1", "labels": {"app": "kong-dp"}, "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "kong-dp-7d9f",
            "uid": rs.metadata.uid, "controller": true}]},
        "spec": template["spec"]
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&pp, &pod)
        .await
        .unwrap();
    deployments
}

/// Runs `kubectl args` against `env` and panics with its stderr unless it succeeded; its
/// stdout.
pub async fn kubectl_ok(env: &kfo_testenv::KubeEnv, args: &[&str]) -> String {
    let out = env.kubectl(args).await.unwrap();
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A ServiceAccount `name` in `ns`, allowed `verbs` (comma-separated) on `resource` there
/// by a Role and RoleBinding of the same name, and a token of it (an hour): its requests
/// are in the apiserver's audit log (`KubeEnv::audited_requests`).
pub async fn service_account_token(
    env: &kfo_testenv::KubeEnv,
    ns: &str,
    name: &str,
    verbs: &str,
    resource: &str,
) -> String {
    let subject = format!("{ns}:{name}");
    for args in [
        vec!["create", "serviceaccount", name, "-n", ns],
        vec![
            "create",
            "role",
            name,
            "--verb",
            verbs,
            "--resource",
            resource,
            "-n",
            ns,
        ],
        vec![
            "create",
            "rolebinding",
            name,
            "--role",
            name,
            "--serviceaccount",
            &subject,
            "-n",
            ns,
        ],
    ] {
        kubectl_ok(env, &args).await;
    }
    let token = kubectl_ok(env, &["create", "token", name, "-n", ns, "--duration=1h"]).await;
    token.trim().to_owned()
}

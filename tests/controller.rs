//! The controller against a real kube-apiserver: validation results land in status
//! conditions and Events, and fixing the spec clears them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kfo_testenv::kube;
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kube::CustomResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ready(p: &FallbackConfigPolicy) -> Option<(String, String, String, Option<i64>)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        c.status.clone(),
        c.reason.clone(),
        c.message.clone(),
        c.observed_generation,
    ))
}

#[tokio::test]
async fn an_invalid_policy_gets_ready_false_and_an_event_and_recovers_when_fixed() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("ctrl").await.unwrap();
    let running = tokio::spawn(controller::run(client.clone(), "test-replica".into()));

    // Valid for the schema, invalid for validate(): S3 without a region, empty selector.
    let policy: FallbackConfigPolicy = serde_json::from_value(json!({
        "apiVersion": "fallback.kong-dp.io/v1alpha1",
        "kind": "FallbackConfigPolicy",
        "metadata": {"name": "prod"},
        "spec": {
            "dataPlanes": {"selector": {}},
            "storage": {"url": "s3://fallback/kong", "readCredentials": {"secretName": "fallback-read"}},
            "exporter": {"mode": "None"}
        }
    }))
    .unwrap();
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy).await.unwrap();

    let (status, reason, message, generation) = wait_for("Ready=False", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "False")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str(), generation),
        ("False", "InvalidSpec", Some(1))
    );
    assert!(message.contains("spec.storage.region"), "{message}");
    assert!(message.contains("spec.dataPlanes.selector"), "{message}");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = wait_for("an InvalidSpec event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.involved_object.name.as_deref(), Some("prod"));

    let fix = json!({"spec": {
        "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
        "storage": {"region": "us-east-1"}
    }});
    api.patch("prod", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();
    let (status, _, _, generation) = wait_for("Ready=True", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "True")
    })
    .await;
    assert_eq!((status.as_str(), generation), ("True", Some(2)));
    let fixed = api.get("prod").await.unwrap();
    assert_eq!(fixed.status.unwrap().observed_generation, Some(2));

    running.abort();
}

#[tokio::test]
async fn the_controller_refuses_to_start_without_its_crd_and_says_how_to_install_it() {
    // A fresh, CRD-less apiserver is not available per test; check the message instead.
    let e = controller::Error::CrdMissing.to_string();
    assert!(e.contains("kubectl apply"), "{e}");
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    controller::check_crd(&env.client().await.unwrap())
        .await
        .unwrap();
}

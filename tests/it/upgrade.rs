//! Upgrading the CRD over stored policies (issue 13 point 7): the CRD of the release
//! before `name`/`keys`, `caCertRef`, `suspend` and the CEL cross-field rules
//! (`tests/fixtures/crd-before-issue-13.yaml`, copied from `crds/` then) is installed on
//! a cluster of its own, policies are stored with it, and today's CRD is applied over it.
//!
//! NB: every change since is additive within `v1alpha1` (new optional fields, older ones
//! kept and still read, new validation rules): the stored objects need no conversion, so no
//! conversion webhook, and one served and stored version stays enough.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kong_fallback_operator::api::{FallbackConfigPolicy, validate};
use kube::CustomResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

use crate::cluster::condition;
use crate::wait::until;

const OLD_CRD: &str = "tests/fixtures/crd-before-issue-13.yaml";

async fn apply_crd(client: &kube::Client, crd: &CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("kfo-upgrade-test").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap();
    let established = await_condition(api, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .unwrap()
        .unwrap();
}

fn object(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "fallback.kong-dp.io/v1alpha1",
        "kind": "FallbackConfigPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn policies_stored_with_the_previous_crd_are_served_validated_and_reconciled_after_the_upgrade()
 {
    let env = kfo_testenv::kube().await;
    let cluster = env.empty_cluster().await.unwrap();
    let client = cluster.client().await.unwrap();
    let old: CustomResourceDefinition = serde_norway::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(OLD_CRD))
            .unwrap(),
    )
    .unwrap();
    apply_crd(&client, &old).await;

    let ns = "kong";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let s3 = kfo_testenv::minio().await;
    let bucket = s3.bucket("upgrade").await.unwrap();
    let ro = s3.read_only_credentials(&bucket).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, data) in [
        (
            "fallback-read",
            json!({"AWS_ACCESS_KEY_ID": ro.access_key_id, "AWS_SECRET_ACCESS_KEY": ro.secret_access_key, "AWS_SESSION_TOKEN": ro.session_token}),
        ),
        // A Secret written for another tool: its own key names.
        (
            "velero-creds",
            json!({"aws_access_key_id": ro.access_key_id, "aws_secret_access_key": ro.secret_access_key, "aws_session_token": ro.session_token}),
        ),
        ("private-ca", json!({"ca.crt": env.ca_pem})),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": data
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let storage = |extra: serde_json::Value| {
        let mut st = json!({
            "url": format!("s3://{bucket}/kong"), "endpoint": s3.endpoint, "region": "us-east-1",
            "readCredentials": {"secretName": "fallback-read"}
        });
        for (k, v) in extra.as_object().unwrap() {
            st[k] = v.clone();
        }
        st
    };
    let spec = |storage: serde_json::Value| {
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": storage,
            "exporter": {"mode": "None"}
        })
    };
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<FallbackConfigPolicy>(&()),
    );
    let pp = PostParams::default();
    // Old-style fields: secretName and caCert {secretName, key}.
    raw.create(
        &pp,
        &object(
            "old-style",
            spec(storage(
                json!({"caCert": {"secretName": "private-ca", "key": "ca.crt"}}),
            )),
        ),
    )
    .await
    .unwrap();
    // What the previous CRD admitted and today's refuses at admission: S3 without a region.
    let mut no_region = spec(storage(json!({})));
    no_region["storage"]
        .as_object_mut()
        .unwrap()
        .remove("region");
    raw.create(&pp, &object("no-region", no_region.clone()))
        .await
        .unwrap();
    // The previous CRD prunes fields it does not know: `keys` would be lost.
    let pruned = raw
        .create(
            &pp,
            &object(
                "pruned",
                spec(storage(json!({"readCredentials": {"secretName": "velero-creds", "keys": {"accessKeyId": "x"}}}))),
            ),
        )
        .await
        .unwrap();
    assert!(
        pruned.data["spec"]["storage"]["readCredentials"]
            .get("keys")
            .is_none(),
        "the previous CRD should not know keys: {:#}",
        pruned.data
    );
    raw.delete("pruned", &Default::default()).await.unwrap();

    // The upgrade.
    apply_crd(&client, &FallbackConfigPolicy::crd()).await;

    // Served and read with today's types; the old spellings mean what they meant.
    let typed: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), ns);
    let old_style = typed.get("old-style").await.unwrap();
    assert_eq!(
        old_style.spec.storage.read_credentials.secret(),
        Some("fallback-read")
    );
    assert_eq!(old_style.spec.storage.ca(), Some(("private-ca", "ca.crt")));
    assert!(!old_style.spec.suspend);
    assert!(validate(&old_style.spec).is_empty());
    let bad = typed.get("no-region").await.unwrap();
    assert!(
        validate(&bad.spec)
            .iter()
            .any(|p| p.field == "spec.storage.region")
    );
    // A new object like it is refused now; the stored one may still be changed elsewhere
    // (the apiserver ratchets a rule whose part of the object did not change).
    let refused = raw
        .create(&pp, &object("no-region-2", no_region))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("spec.storage.region"),
        "{refused}"
    );
    raw.patch(
        "no-region",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"dataPlanes": {"rollout": true}}})),
    )
    .await
    .unwrap();
    // New-style fields work beside them: name, keys, caCertRef.
    raw.create(
        &pp,
        &object(
            "new-style",
            spec(storage(json!({
                "readCredentials": {"name": "velero-creds", "keys": {
                    "accessKeyId": "aws_access_key_id",
                    "secretAccessKey": "aws_secret_access_key",
                    "sessionToken": "aws_session_token"
                }},
                "caCertRef": {"name": "private-ca", "key": "ca.crt"}
            }))),
        ),
    )
    .await
    .unwrap();

    // The operator reconciles all three: the old-style and new-style ones are Ready (the
    // storage answered with the credentials each names), the other says why it is not.
    let running = crate::cluster::run_controller(&client, ns, "kfo-upgrade");
    for name in ["old-style", "new-style"] {
        let p = until(&format!("{name} Ready=True"), async || {
            typed
                .get(name)
                .await
                .ok()
                .filter(|p| condition(p, "Ready").is_some_and(|c| c.0 == "True"))
        })
        .await;
        assert_eq!(
            condition(&p, "StorageReachable").map(|c| c.0),
            Some("True".to_owned()),
            "{name}"
        );
    }
    let p = until("no-region Stalled=True", async || {
        typed
            .get("no-region")
            .await
            .ok()
            .filter(|p| condition(p, "Stalled").is_some_and(|c| c.0 == "True"))
    })
    .await;
    let (_, reason, message) = condition(&p, "Ready").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("spec.storage.region"), "{message}");
    running.abort();
    cluster.check_alive().unwrap();
}

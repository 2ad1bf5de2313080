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

use crate::wait::until;
use serde_json::json;

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
    let running = crate::cluster::run_controller(&client, &ns, "test-replica");

    // Admitted by the apiserver, refused by validate(): a plugin listed twice.
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://fallback/kong", "region": "us-east-1", "readCredentials": {"secretName": "fallback-read"}},
            "exporter": {"mode": "None", "plugins": crate::cluster::plugins_listed_twice()}
        }),
    );
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy).await.unwrap();

    let (status, reason, message, generation) = until("Ready=False", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "False")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str(), generation),
        ("False", "InvalidSpec", Some(1))
    );
    assert!(
        message.contains("spec.exporter.plugins[1].name"),
        "{message}"
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = until("an InvalidSpec event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(warning.involved_object.name.as_deref(), Some("prod"));

    let s3 = kfo_testenv::minio().await;
    let bucket = s3.bucket("ctrl").await.unwrap();
    let fix = json!({"spec": {
        "exporter": {"plugins": [{"name": "my-auth", "version": "1.0.0"}]},
        "storage": {"url": format!("s3://{bucket}/kong"), "region": "us-east-1", "endpoint": s3.endpoint}
    }});
    api.patch("prod", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .unwrap();

    // Valid now, but the read-credentials Secret is missing: Ready says which.
    let (_, reason, message, _) = until("SecretMissing", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "SecretMissing")
    })
    .await;
    assert_eq!(reason, "SecretMissing");
    assert!(
        message.contains(&format!("Secret {ns}/fallback-read")),
        "{message}"
    );
    until("a SecretMissing event", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretMissing"))
    })
    .await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |data: serde_json::Value| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fallback-read"}, "stringData": data
        }))
        .unwrap()
    };
    secrets
        .create(
            &PostParams::default(),
            &secret(json!({"AWS_ACCESS_KEY_ID": "x"})),
        )
        .await
        .unwrap();
    let (_, _, message, _) = until("SecretKeyMissing", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "SecretKeyMissing")
    })
    .await;
    assert!(message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
    // The read-only credentials a data plane would get: the store answers, Ready.
    let ro = s3.read_only_credentials(&bucket).await.unwrap();
    secrets
        .replace(
            "fallback-read",
            &PostParams::default(),
            &secret(json!({
                "AWS_ACCESS_KEY_ID": ro.access_key_id,
                "AWS_SECRET_ACCESS_KEY": ro.secret_access_key,
                "AWS_SESSION_TOKEN": ro.session_token
            })),
        )
        .await
        .unwrap();
    let (status, _, _, generation) = until("Ready=True", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "True")
    })
    .await;
    assert_eq!((status.as_str(), generation), ("True", Some(2)));
    let fixed = api.get("prod").await.unwrap();
    assert_eq!(fixed.status.unwrap().observed_generation, Some(2));

    running.abort();
}

/// `spec.storage.caCert` reaches the operator's S3 client: against a store serving TLS
/// with a private CA, the status names the missing CA Secret, then its missing key, and
/// the store is reachable once the Secret holds the CA.
#[tokio::test]
async fn a_store_behind_a_private_ca_is_reachable_once_the_ca_secret_holds_the_ca() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("ctrl-ca").await.unwrap();
    let running = crate::cluster::run_controller(&client, &ns, "test-replica");
    let s3 = kfo_testenv::minio_tls().await;
    let bucket = s3.bucket("ctrl-ca").await.unwrap();

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |name: &str, data: serde_json::Value| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data
        }))
        .unwrap()
    };
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "fallback-read",
                json!({"AWS_ACCESS_KEY_ID": s3.root_user, "AWS_SECRET_ACCESS_KEY": s3.root_password}),
            ),
        )
        .await
        .unwrap();
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": format!("s3://{bucket}/kong"), "region": "us-east-1", "endpoint": s3.endpoint,
                "readCredentials": {"secretName": "fallback-read"},
                "caCert": {"secretName": "storage-ca", "key": "ca.crt"}
            },
            "exporter": {"mode": "None"}
        }),
    );
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &policy).await.unwrap();

    let (_, _, message, _) = until("SecretMissing", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "SecretMissing")
    })
    .await;
    assert!(
        message.contains(&format!("Secret {ns}/storage-ca (spec.storage.caCert)")),
        "{message}"
    );

    secrets
        .create(
            &PostParams::default(),
            &secret("storage-ca", json!({"tls.crt": "x"})),
        )
        .await
        .unwrap();
    let (_, _, message, _) = until("SecretKeyMissing", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "SecretKeyMissing")
    })
    .await;
    assert!(
        message.contains("(spec.storage.caCert) has no key ca.crt"),
        "{message}"
    );

    secrets
        .replace(
            "storage-ca",
            &PostParams::default(),
            &secret("storage-ca", json!({"ca.crt": "not a certificate"})),
        )
        .await
        .unwrap();
    let (_, _, message, _) = until("InvalidCaBundle", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "InvalidCaBundle")
    })
    .await;
    assert!(
        message.contains("(spec.storage.caCert) key ca.crt: the CA bundle holds no PEM"),
        "{message}"
    );

    let ca_pem = s3.ca_pem.clone().unwrap();
    secrets
        .replace(
            "storage-ca",
            &PostParams::default(),
            &secret("storage-ca", json!({"ca.crt": ca_pem})),
        )
        .await
        .unwrap();
    until("Ready=True", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "True")
    })
    .await;

    // Another CA (the apiserver's): the store is refused at once, long before the next
    // scheduled check (5 min), because the CA Secret's version is part of the inputs.
    secrets
        .replace(
            "storage-ca",
            &PostParams::default(),
            &secret("storage-ca", json!({"ca.crt": env.ca_pem})),
        )
        .await
        .unwrap();
    let (_, _, message, _) = until("Ready=False with another CA", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "False")
    })
    .await;
    assert!(message.contains("Certificate"), "{message}");

    running.abort();
}

#[tokio::test]
async fn the_controller_refuses_to_start_without_its_crd_and_says_how_to_install_it() {
    let env = kube().await;
    // NB: the shared apiserver has the CRD (other tests install it): a cluster of its own.
    let empty = env.empty_cluster().await.unwrap();
    let e = controller::check_crd(&empty.client().await.unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e, controller::Error::CrdMissing),
        "not the missing-CRD error: {e:?}"
    );
    assert!(e.to_string().contains("kubectl apply"), "{e}");
    // `run` checks first: it ends with the same error instead of watching in a loop.
    let ns = "kong";
    let run = crate::cluster::run_controller(&empty.client().await.unwrap(), ns, "kfo-no-crd");
    let ended = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the controller kept running without its CRD")
        .unwrap();
    assert!(
        matches!(ended, Err(controller::Error::CrdMissing)),
        "{ended:?}"
    );
    // With the CRD installed, the check passes.
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    controller::check_crd(&env.client().await.unwrap())
        .await
        .unwrap();
}

mod operator_mode {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kfo_testenv::{KongCp, Mtls, minio};
    use kong_fallback_operator::kong::config::config_hashes;
    use kube::api::{Patch, PatchParams};

    const TABLE: &str = r#"{"_format_version":"3.0","_transform":false,"services":[{"id":"9748f662-7711-4a90-8186-dc02f10eb0f5","name":"httpbin","host":"httpbin.org","port":443}],"routes":[{"id":"2f55b0b3-04a1-4e47-8c0f-c0d6f0b2b3a2","service":"9748f662-7711-4a90-8186-dc02f10eb0f5","paths":["\/mock"]}]}"#;

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
        }))
        .unwrap()
    }

    use crate::cluster::condition;

    #[tokio::test]
    async fn the_operator_exports_what_the_control_plane_publishes_and_reports_it() {
        let env = kube().await;
        env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
        let client = env.client().await.unwrap();
        let ns = env.namespace("ctrl-export").await.unwrap();
        let s3 = minio().await;
        let bucket = s3.bucket("ctrl-export").await.unwrap();
        let ro = s3.read_only_credentials(&bucket).await.unwrap();
        let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
        let hash = config_hashes(&serde_json::from_str(TABLE).unwrap()).config;
        cp.push(TABLE, &hash);

        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
        secrets
            .create(
                &PostParams::default(),
                &secret(
                    "fallback-read",
                    &[
                        ("AWS_ACCESS_KEY_ID", &ro.access_key_id),
                        ("AWS_SECRET_ACCESS_KEY", &ro.secret_access_key),
                        ("AWS_SESSION_TOKEN", &ro.session_token),
                    ],
                ),
            )
            .await
            .unwrap();
        let settings = controller::Settings {
            namespace: Some(ns.clone()),
            ..controller::Settings::new("kfo-test-0")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(kong_fallback_operator::http::serve(
            listener,
            settings.metrics.clone(),
            settings.health.clone(),
        ));
        let get = async |path: &str| {
            let r = reqwest::get(format!("{http_base}{path}")).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        };
        assert_eq!(get("/healthz").await.0, 200);
        let (code, body) = get("/readyz").await;
        assert_eq!(code, 503, "not ready before the caches sync");
        assert!(body.contains("caches"), "{body}");
        let running = tokio::spawn(controller::run(client.clone(), settings));
        let policy: FallbackConfigPolicy = crate::cluster::policy(
            "prod",
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {
                    "url": format!("s3://{bucket}/kong"),
                    "endpoint": s3.endpoint,
                    "region": "us-east-1",
                    "readCredentials": {"secretName": "fallback-read"},
                    "writeCredentials": {"secretName": "fallback-write"}
                },
                "exporter": {
                    "mode": "Operator",
                    "versions": ["3.6.1.4"],
                    "minInterval": "0s",
                    "controlPlane": {"endpoint": cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}
                }
            }),
        );
        let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &policy).await.unwrap();

        // The Secrets do not exist yet: the status names the first one missing.
        let (_, reason, message) = until("SecretMissing", async || {
            condition(&api.get("prod").await.ok()?, "ControlPlaneConnected")
                .filter(|c| c.1 == "SecretMissing")
        })
        .await;
        assert_eq!(reason, "SecretMissing");
        assert!(
            message.contains(&format!("Secret {ns}/kong-cluster-cert")),
            "{message}"
        );

        secrets
            .create(
                &PostParams::default(),
                &secret(
                    "kong-cluster-cert",
                    &[
                        ("tls.crt", &cp.certs.cert_pem),
                        ("tls.key", &cp.certs.key_pem),
                    ],
                ),
            )
            .await
            .unwrap();
        secrets
            .create(
                &PostParams::default(),
                &secret(
                    "fallback-write",
                    &[
                        ("AWS_ACCESS_KEY_ID", &s3.root_user),
                        ("AWS_SECRET_ACCESS_KEY", &s3.root_password),
                    ],
                ),
            )
            .await
            .unwrap();

        let exported = until("an export in status", async || {
            let p = api.get("prod").await.ok()?;
            p.status.as_ref()?.exports.first().cloned()
        })
        .await;
        assert_eq!(exported.version, "3.6.1.4");
        assert_eq!(exported.key, "kong/3.6.1.4/config.json");
        assert_eq!(exported.config_hash, hash);
        assert_eq!(exported.bytes, TABLE.len() as i64);
        let p = until("Ready=True", async || {
            let p = api.get("prod").await.ok()?;
            (condition(&p, "Ready")?.0 == "True").then_some(p)
        })
        .await;
        assert_eq!(
            condition(&p, "ControlPlaneConnected").unwrap().1,
            "Connected"
        );
        assert_eq!(condition(&p, "Exporting").unwrap().1, "Exported");
        // MinIO enforces conditional writes: the leader's check says fencing holds, and
        // its throwaway probe object is gone.
        until("Fencing=True", async || {
            let p = api.get("prod").await.ok()?;
            let c = condition(&p, "Fencing")?;
            (c.0 == "True" && c.1 == "Enforced").then_some(())
        })
        .await;
        assert!(
            s3.read(&bucket, "kong/.kong-fallback-operator/fencing-probe")
                .await
                .unwrap()
                .is_none()
        );
        // The only replica holds the policy's Lease, owned by the policy.
        let leader = p.status.as_ref().unwrap().leader.clone().unwrap();
        assert!(leader.identity.starts_with("kfo-test-0_"), "{leader:?}");
        assert_eq!(condition(&p, "Leading").unwrap().1, "Elected");
        let lease =
            Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns)
                .get("prod")
                .await
                .unwrap();
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some(leader.identity.as_str())
        );
        let owner = &lease.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("FallbackConfigPolicy", "prod")
        );

        assert_eq!(
            &s3.read(&bucket, "kong/3.6.1.4/config.json")
                .await
                .unwrap()
                .unwrap()[..],
            TABLE.as_bytes()
        );

        // The export shows in the metrics, labelled with the policy and version.
        assert_eq!(get("/readyz").await.0, 200);
        let (code, metrics) = get("/metrics").await;
        assert_eq!(code, 200);
        let labels = format!(r#"namespace="{ns}",policy="prod",version="3.6.1.4""#);
        for line in [
            format!("kong_fallback_exports_total{{{labels}}} 1"),
            format!(
                "kong_fallback_exported_bytes_total{{{labels}}} {}",
                TABLE.len()
            ),
            format!("kong_fallback_control_plane_connected{{{labels}}} 1"),
            format!("kong_fallback_export_duration_seconds_count{{{labels}}} 1"),
            format!(r#"kong_fallback_leader{{namespace="{ns}",policy="prod"}} 1"#),
        ] {
            assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
        }
        assert!(
            metrics
                .contains(r#"kong_fallback_reconcile_total{controller="policy",result="success"}"#),
            "{metrics}"
        );
        assert!(
            !metrics.contains(&s3.root_password),
            "a secret in the metrics"
        );

        let reasons = crate::cluster::event_reasons(&client, &ns).await;
        assert!(
            reasons.contains(&"SecretMissing".to_owned())
                && reasons.contains(&"Exported".to_owned())
                && reasons.contains(&"LeaderElected".to_owned()),
            "{reasons:?}"
        );

        // No secret value reached the status or an Event.
        let status = serde_json::to_string(&p.status).unwrap();
        let events: Api<Event> = Api::namespaced(client.clone(), &ns);
        let notes: String = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
        for secret in [&s3.root_password, &cp.certs.key_pem] {
            assert!(!status.contains(secret.as_str()) && !notes.contains(secret.as_str()));
        }

        // Deleting the policy stops its exporter: the CP sees the session end.
        api.delete("prod", &Default::default()).await.unwrap();
        until("the session to end", async || {
            cp.data_planes().iter().all(|d| !d.connected).then_some(())
        })
        .await;
        running.abort();
    }

    #[tokio::test]
    async fn wrong_write_credentials_make_exporting_false_until_the_secret_is_fixed() {
        let env = kube().await;
        env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
        let client = env.client().await.unwrap();
        let ns = env.namespace("ctrl-creds").await.unwrap();
        let s3 = minio().await;
        let bucket = s3.bucket("ctrl-creds").await.unwrap();
        let ro = s3.read_only_credentials(&bucket).await.unwrap();
        let cp = KongCp::start(Mtls::Shared, "3.10.0.0").await.unwrap();
        cp.push(
            TABLE,
            &config_hashes(&serde_json::from_str(TABLE).unwrap()).config,
        );

        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for s in [
            secret(
                "fallback-read",
                &[
                    ("AWS_ACCESS_KEY_ID", &ro.access_key_id),
                    ("AWS_SECRET_ACCESS_KEY", &ro.secret_access_key),
                    ("AWS_SESSION_TOKEN", &ro.session_token),
                ],
            ),
            secret(
                "kong-cluster-cert",
                &[
                    ("tls.crt", &cp.certs.cert_pem),
                    ("tls.key", &cp.certs.key_pem),
                ],
            ),
            secret(
                "fallback-write",
                &[
                    ("AWS_ACCESS_KEY_ID", &s3.root_user),
                    ("AWS_SECRET_ACCESS_KEY", "wrong-password"),
                ],
            ),
        ] {
            secrets.create(&PostParams::default(), &s).await.unwrap();
        }
        let running = crate::cluster::run_controller(&client, &ns, "kfo-test-1");
        let policy: FallbackConfigPolicy = crate::cluster::policy(
            "prod",
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {
                    "url": format!("s3://{bucket}/kong"), "endpoint": s3.endpoint, "region": "us-east-1",
                    "readCredentials": {"secretName": "fallback-read"},
                    "writeCredentials": {"secretName": "fallback-write"}
                },
                "exporter": {
                    "mode": "Operator", "versions": ["3.6.1.4"], "minInterval": "0s",
                    "controlPlane": {"endpoint": cp.endpoint, "clusterCertSecret": "kong-cluster-cert"}
                }
            }),
        );
        let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &policy).await.unwrap();

        let (_, _, message) = until("Exporting=False (Credentials)", async || {
            condition(&api.get("prod").await.ok()?, "Exporting").filter(|c| c.1 == "Credentials")
        })
        .await;
        assert!(
            message.contains(&format!("{bucket}/kong/3.6.1.4/config.json")),
            "{message}"
        );
        assert!(message.contains("credentials were refused"), "{message}");
        assert!(!message.contains("wrong-password"));

        let fixed = json!({"stringData": {"AWS_SECRET_ACCESS_KEY": s3.root_password}});
        secrets
            .patch(
                "fallback-write",
                &PatchParams::default(),
                &Patch::Merge(&fixed),
            )
            .await
            .unwrap();
        until("Ready=True after the fix", async || {
            (condition(&api.get("prod").await.ok()?, "Ready")?.0 == "True").then_some(())
        })
        .await;
        // NB: the Events of a reconcile follow its status write: wait for them.
        let reasons = until("the Exported Event", async || {
            let reasons = crate::cluster::event_reasons(&client, &ns).await;
            reasons.contains(&"Exported".to_owned()).then_some(reasons)
        })
        .await;
        assert!(reasons.contains(&"Credentials".to_owned()), "{reasons:?}");
        running.abort();
    }
}

/// A policy with `dataPlanes.rollout: true` and nothing else to do.
fn rollout_policy() -> FallbackConfigPolicy {
    crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}, "rollout": true},
            "storage": {"url": "gcs://fallback/kong", "readCredentials": {"ambient": true}},
            "exporter": {"mode": "None"}
        }),
    )
}

/// The first Event in `ns` with `reason`, waited for.
async fn event_with_reason(client: &kube::Client, ns: &str, reason: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    until(&format!("a {reason} event"), async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// Whether the Deployment's pod template carries `kubectl rollout restart`'s annotation.
fn restarted(d: &k8s_openapi::api::apps::v1::Deployment) -> bool {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
}

/// A restart cannot help while nothing would inject the new pods: the rollout is held,
/// and the Event says what it waits for; the workload is left alone.
#[tokio::test]
async fn a_rollout_that_cannot_inject_is_held_and_said_not_done() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("rollout").await.unwrap();
    let pp = PostParams::default();
    let deployments = crate::cluster::deployment_with_a_pod(&client, &ns).await;

    let policy = rollout_policy();
    Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(&pp, &policy)
        .await
        .unwrap();
    // No webhook in this replica.
    let running = crate::cluster::run_controller(&client, &ns, "kfo-rollout-test");
    let event = event_with_reason(&client, &ns, "RolloutHeld").await;
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("Deployment kong-dp") && message.contains("webhook"),
        "{message}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let d = deployments.get("kong-dp").await.unwrap();
    assert!(!restarted(&d), "a restart that cannot inject was done");
    running.abort();
}

/// The pacing lives on the workload: a workload restarted the most times for this policy
/// generation is not restarted again, whichever replica reads it, and the operator gives
/// up once, with a Warning Event that says why.
#[tokio::test]
async fn a_rollout_gives_up_after_the_cap_recorded_on_the_workload() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("rollout-cap").await.unwrap();
    let pp = PostParams::default();
    let deployments = crate::cluster::deployment_with_a_pod(&client, &ns).await;
    let policy = rollout_policy();
    let created = Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(&pp, &policy)
        .await
        .unwrap();
    // Another replica restarted it three times for this generation, an hour ago.
    let pacing = json!({
        "policy": created.metadata.uid.clone().unwrap(),
        "generation": created.metadata.generation.unwrap(),
        "restarts": 3,
        "last": "2020-01-01T00:00:00Z"
    })
    .to_string();
    deployments
        .patch(
            "kong-dp",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"fallback.kong-dp.io/rollout": pacing}}}),
            ),
        )
        .await
        .unwrap();
    let configuration = kfo_testenv::unique_name("kfo-rollout-webhook");
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(crate::cluster::local_webhook(
            &ns,
            "webhook-tls",
            &configuration,
            kong_fallback_operator::webhook::registration::FailurePolicy::Ignore,
            Duration::from_secs(1),
        )),
        ..controller::Settings::new("kfo-rollout-cap-test")
    };
    let running = tokio::spawn(controller::run(client.clone(), settings));
    let event = event_with_reason(&client, &ns, "RolloutGaveUp").await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains("restarted 3 times"), "{message}");
    let d = deployments.get("kong-dp").await.unwrap();
    let annotations = d.metadata.annotations.clone().unwrap_or_default();
    let recorded: serde_json::Value =
        serde_json::from_str(&annotations["fallback.kong-dp.io/rollout"]).unwrap();
    assert_eq!(recorded["gaveUp"], true, "{recorded}");
    assert!(!restarted(&d), "restarted past the cap");
    running.abort();
    Api::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>::all(
        client.clone(),
    )
    .delete(&configuration, &Default::default())
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pod_two_policies_select_is_a_conflict_in_the_newer_ones_status() {
    use k8s_openapi::api::core::v1::Pod;
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("overlap").await.unwrap();
    let pp = PostParams::default();
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    for name in ["first", "second"] {
        let p: FallbackConfigPolicy = crate::cluster::policy(
            name,
            json!({
                "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
                "storage": {"url": format!("gcs://{name}/kong"), "readCredentials": {"ambient": true}},
                "exporter": {"mode": "None"}
            }),
        );
        api.create(&pp, &p).await.unwrap();
        // creationTimestamp has a one-second resolution: make "first" the older one.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dp-0", "labels": {"app": "kong-dp"}},
        "spec": {"containers": [{"name": "proxy", "image": "kong:3.9.1"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&pp, &pod)
        .await
        .unwrap();
    let running = crate::cluster::run_controller(&client, &ns, "kfo-overlap-test");
    let condition = async |name: &str| {
        let p = api.get(name).await.ok()?;
        let c = p
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "PodsInjected")?;
        Some((c.reason, c.message))
    };
    let (reason, message) = until("the conflict", async || {
        condition("second")
            .await
            .filter(|c| c.0 == "PolicyConflict")
    })
    .await;
    assert_eq!(reason, "PolicyConflict");
    assert!(
        message.contains(&format!("dp-0 by {ns}/first")),
        "{message}"
    );
    // The older policy owns the pod (not injected here: no webhook runs in this test).
    let (reason, message) = until("the owner's report", async || condition("first").await).await;
    assert_eq!(reason, "NotInjected", "{message}");
    running.abort();
}

/// A burst of pods is reported with a status write a second, not one per pod: pod churn
/// re-triggers a policy at most once a second, and our own status writes trigger nothing.
#[tokio::test]
async fn pod_churn_costs_a_status_write_a_second_not_one_per_pod() {
    use futures::{FutureExt, StreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{WatchEvent, WatchParams};
    const PODS: i32 = 40;
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("churn").await.unwrap();
    let pp = PostParams::default();
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "churn",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "gcs://churn/kong", "readCredentials": {"ambient": true}},
            "exporter": {"mode": "None"}
        }),
    );
    api.create(&pp, &policy).await.unwrap();
    let running = crate::cluster::run_controller(&client, &ns, "kfo-churn-test");
    let importers =
        |p: &FallbackConfigPolicy| p.status.as_ref()?.pods.as_ref().map(|c| c.importers);
    let baseline = until("the first status", async || {
        let p = api.get("churn").await.ok()?;
        (importers(&p) == Some(0)).then_some(p)
    })
    .await;
    let rv = baseline.metadata.resource_version.clone().unwrap();
    let watch = WatchParams::default().fields("metadata.name=churn");
    let mut events = api.watch(&watch, &rv).await.unwrap().boxed();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let start = std::time::Instant::now();
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("dp-{i}"), "labels": {"app": "kong-dp"}},
            "spec": {"containers": [{"name": "proxy", "image": "kong:3.9.1"}]}
        }))
        .unwrap();
        pods.create(&pp, &pod).await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let churn = start.elapsed();

    let mut writes = 0u32;
    let counted = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            if let WatchEvent::Modified(p) = event.unwrap() {
                writes += 1;
                if importers(&p) == Some(PODS) {
                    return true;
                }
            }
        }
        // NB: a watch the apiserver ended is no proof of the count.
        false
    })
    .await;
    assert!(
        counted == Ok(true),
        "status never counted {PODS} importers ({counted:?}: false = the watch ended)"
    );
    // Whatever trailing write is still due lands within a period.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(Some(event)) = events.next().now_or_never() {
        if let WatchEvent::Modified(_) = event.unwrap() {
            writes += 1;
        }
    }
    // One write a second of churn, the leading one, and the one that settles it.
    let bound = churn.as_secs() as u32 + 3;
    assert!(
        writes <= bound,
        "{writes} status writes for {PODS} pods created over {churn:?} (at most {bound})"
    );
    running.abort();
}

/// Issue 13 point 7: `suspend: true` stops the exports (a new configuration is not
/// written) and says so in `Ready` and an Event; `suspend: false` resumes them.
#[tokio::test]
async fn a_suspended_policy_stops_exporting_says_so_and_resumes() {
    let mut fleet = crate::fleet::Fleet::new(
        "suspend",
        crate::fleet::Timings {
            lease: 15,
            renew: 10,
            retry: 2,
        },
    )
    .await;
    fleet.working_read_credentials().await;
    let _operator = fleet.start("kfo-0");
    let api: Api<FallbackConfigPolicy> = Api::namespaced(fleet.client.clone(), &fleet.ns);
    let first = fleet.push();
    fleet
        .wait_stored(&first, Duration::from_secs(40))
        .await
        .expect("the first configuration is exported");
    until("Ready=True", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "True")
    })
    .await;

    let suspend = |on: bool| json!({"spec": {"suspend": on}});
    api.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(&suspend(true)),
    )
    .await
    .unwrap();
    let (_, _, message, _) = until("Ready=False Suspended", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.1 == "Suspended")
    })
    .await;
    assert!(message.contains("the webhook still injects"), "{message}");
    until("a Suspended event", async || {
        crate::cluster::event_reasons(&fleet.client, &fleet.ns)
            .await
            .contains(&"Suspended".to_owned())
            .then_some(())
    })
    .await;
    let second = fleet.push();
    assert!(
        fleet
            .wait_stored(&second, Duration::from_secs(8))
            .await
            .is_none(),
        "a suspended policy exported"
    );
    assert_eq!(fleet.stored().await.unwrap().0, first);

    api.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(&suspend(false)),
    )
    .await
    .unwrap();
    fleet
        .wait_stored(&second, Duration::from_secs(40))
        .await
        .expect("the newest configuration is exported once resumed");
    until("Ready=True again", async || {
        ready(&api.get("prod").await.ok()?).filter(|r| r.0 == "True")
    })
    .await;
    assert!(
        crate::cluster::event_reasons(&fleet.client, &fleet.ns)
            .await
            .contains(&"Resumed".to_owned())
    );
}

/// The finalizer is added by server-side apply of its one entry, so a reconcile that runs
/// on a cached object from before our own add (hundreds did when an operator started on
/// existing policies: bench P4) finds it there instead of failing. kube-runtime's
/// `finalizer` helper, which the controller used before, tests the cached list in a JSON
/// patch: the same stale object made it fail with 422 and requeue the policy for 10 s.
#[tokio::test]
async fn the_finalizer_is_added_once_from_a_stale_object_and_keeps_another_owners() {
    let env = kube().await;
    env.install_crd(&FallbackConfigPolicy::crd()).await.unwrap();
    let client = env.client().await.unwrap();
    let ns = env.namespace("ctrl-fin").await.unwrap();
    let api: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {"url": "s3://fallback/kong", "region": "us-east-1", "readCredentials": {"secretName": "fallback-read"}},
            "exporter": {"mode": "None"}
        }),
    );
    let stale = std::sync::Arc::new(api.create(&PostParams::default(), &policy).await.unwrap());
    let first = controller::with_finalizer(&api, stale.clone())
        .await
        .unwrap();
    assert_eq!(
        first.metadata.finalizers,
        Some(vec![controller::FINALIZER.to_owned()])
    );

    // Another controller's finalizer, then ours again from the object cached before both.
    api.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([
                {"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/other"}
            ]))
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let again = controller::with_finalizer(&api, stale).await;
    let again = again.expect("a stale object must not make adding the finalizer fail");
    let mut finalizers = again.metadata.finalizers.clone().unwrap_or_default();
    finalizers.sort();
    assert_eq!(
        finalizers,
        vec![
            "example.com/other".to_owned(),
            controller::FINALIZER.to_owned()
        ],
        "ours once, the other kept"
    );
    assert_eq!(
        api.get("prod").await.unwrap().metadata.finalizers,
        again.metadata.finalizers
    );

    // An object that already carries it is passed through without a request.
    let current = std::sync::Arc::new(api.get("prod").await.unwrap());
    let through = controller::with_finalizer(&api, current.clone())
        .await
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&current, &through));

    // Cleanup: without an operator running, remove both so the namespace can go.
    api.patch(
        "prod",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

/// The Secret reader serves a value from memory only while the metadata watch reports the
/// version it read, so a policy's reconciles (and 200 policies naming one Secret) cost one
/// GET per change of the Secret, not one per read; an update or a deletion is read anew.
/// Counted in the apiserver's audit log of a ServiceAccount's requests. The uncached reader
/// (what every read was before) is one GET per read.
#[tokio::test]
async fn secrets_are_read_once_per_change_of_their_version() {
    use k8s_openapi::api::core::v1::Secret;
    use kong_fallback_operator::controller::secrets::SecretReader;
    let env = kube().await;
    let admin = env.client().await.unwrap();
    let ns = env.namespace("secret-reads").await.unwrap();
    let token = crate::cluster::service_account_token(env, &ns, "reader", "get", "secrets").await;
    let as_sa = env.client_with_token(&token).await.unwrap();

    // The controller's metadata watch of Secrets, as `controller::run` keeps it.
    let metas: Api<kube::core::PartialObjectMeta<Secret>> = Api::namespaced(admin.clone(), &ns);
    let (store, writer) = kube::runtime::reflector::store();
    let watch = tokio::spawn({
        use futures::StreamExt;
        kube::runtime::reflector(writer, kube::runtime::watcher(metas, Default::default()))
            .for_each(|_| async {})
    });
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret = |value: &str| -> Secret {
        serde_json::from_value(
            json!({"metadata": {"name": "creds"}, "stringData": {"AWS_ACCESS_KEY_ID": value}}),
        )
        .unwrap()
    };
    let value = |s: &Secret| {
        String::from_utf8(s.data.as_ref().unwrap()["AWS_ACCESS_KEY_ID"].0.clone()).unwrap()
    };
    let created = secrets
        .create(&PostParams::default(), &secret("one"))
        .await
        .unwrap();
    watched(&store, &ns, created.metadata.resource_version.clone()).await;
    let gets = || {
        env.audited_requests(&token)
            .unwrap()
            .into_iter()
            .filter(|(g, r, v)| g.is_empty() && r == "secrets" && v == "get")
            .count()
    };

    let reader = SecretReader::cached(as_sa.clone(), store.clone());
    for _ in 0..5 {
        let s = reader.get(&ns, "creds").await.unwrap().unwrap();
        assert_eq!(value(&s), "one");
    }
    assert_eq!(gets(), 1, "five reads of one version: one GET");

    let updated = secrets
        .replace("creds", &PostParams::default(), &secret("two"))
        .await
        .unwrap();
    watched(&store, &ns, updated.metadata.resource_version.clone()).await;
    for _ in 0..3 {
        let s = reader.get(&ns, "creds").await.unwrap().unwrap();
        assert_eq!(value(&s), "two", "an updated Secret is read anew");
    }
    assert_eq!(gets(), 2, "one more GET for the new version");

    secrets.delete("creds", &Default::default()).await.unwrap();
    watched(&store, &ns, None).await;
    assert!(reader.get(&ns, "creds").await.unwrap().is_none());
    assert_eq!(
        reader.cached_values(),
        0,
        "a deleted Secret's value is dropped"
    );
    assert_eq!(gets(), 3);

    // Before: every read a GET.
    secrets
        .create(&PostParams::default(), &secret("three"))
        .await
        .unwrap();
    let direct = SecretReader::direct(as_sa);
    for _ in 0..3 {
        direct.get(&ns, "creds").await.unwrap().unwrap();
    }
    assert_eq!(gets(), 6, "the uncached reader: a GET per read");
    watch.abort();
}

/// Until the Secret metadata in `store` is at `rv` (`None`: gone).
async fn watched(
    store: &kube::runtime::reflector::Store<
        kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>,
    >,
    ns: &str,
    rv: Option<String>,
) {
    until("the watch at the Secret's version", async || {
        let m = store.get(&kube::runtime::reflector::ObjectRef::new("creds").within(ns));
        (m.and_then(|m| m.metadata.resource_version.clone()) == rv).then_some(())
    })
    .await
}

//! The injection webhook with the real apiserver calling it over HTTPS.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{EnvVar, Pod, Secret};
use kfo_testenv::kube;
use kong_fallback_operator::api::FallbackConfigPolicy;
use kong_fallback_operator::controller;
use kong_fallback_operator::inject::{ANNOTATION, Role, recorded};
use kong_fallback_operator::webhook::{self, certs, registration};
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::wait::until;

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "proxy", "image": "kong/kong-gateway:3.6.1.4",
                                  "env": [{"name": "KONG_ROLE", "value": "data_plane"}]}]}
    }))
    .unwrap()
}

fn env(p: &Pod) -> Vec<EnvVar> {
    p.spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default()
}

fn find<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a EnvVar> {
    env.iter().find(|e| e.name == name)
}

fn requests(metrics: &kong_fallback_operator::metrics::Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("kong_fallback_webhook_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn the_apiserver_calls_the_webhook_and_pods_get_the_fallback_env() {
    let env_ = kube().await;
    env_.install_crd(&FallbackConfigPolicy::crd())
        .await
        .unwrap();
    let client = env_.client().await.unwrap();
    let ns = env_.namespace("webhook").await.unwrap();
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
            "storage": {
                "url": "s3://fallback/kong", "region": "eu-west-1",
                "endpoint": "http://minio.storage:9000",
                "readCredentials": {"secretName": "fallback-read"},
                "writeCredentials": {"secretName": "fallback-write"}
            },
            "exporter": {"mode": "BackupPods"},
            "election": {"mirrorToStorage": false}
        }),
    );
    Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    // The credentials Secrets exist (a missing one is the next test's case).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for name in ["fallback-read", "fallback-write"] {
        secrets
            .create(&PostParams::default(), &credentials(name))
            .await
            .unwrap();
    }
    // A pod created before the operator runs: no webhook, no injection.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod("dp-early", "kong-dp"))
        .await
        .unwrap();

    let configuration = kfo_testenv::unique_name("kfo-webhook");
    let webhook_settings = crate::cluster::local_webhook(
        &ns,
        "webhook-tls",
        &configuration,
        registration::FailurePolicy::Fail,
        Duration::from_secs(1),
    );
    let webhook_url = format!("https://{}/", webhook_settings.addr);
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        // Fail, so that a webhook the apiserver cannot reach or trust fails the test.
        webhook: Some(webhook_settings),
        ..controller::Settings::new("kfo-webhook-test")
    };
    let metrics = settings.metrics.clone();
    let health = settings.health.clone();
    let running = tokio::spawn(controller::run(client.clone(), settings));

    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    until("the webhook registration", async || {
        let c = mwcs.get_opt(&configuration).await.ok()??;
        let w = c.webhooks?.into_iter().next()?;
        let cond = w.match_conditions?.into_iter().next()?;
        (cond.expression.contains(&ns) && w.client_config.ca_bundle.is_some()).then_some(())
    })
    .await;
    until(
        "ready: caches synced and the certificate loaded",
        async || health.pending().is_empty().then_some(()),
    )
    .await;

    let importer = pods
        .create(&PostParams::default(), &pod("dp-0", "kong-dp"))
        .await
        .unwrap();
    let e = env(&importer);
    assert_eq!(e[0].name, "KONG_ROLE", "the user's env stays first");
    assert_eq!(
        find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT").and_then(|v| v.value.as_deref()),
        Some("on")
    );
    assert_eq!(
        find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE").and_then(|v| v.value.as_deref()),
        Some("s3://fallback/kong")
    );
    let key = find(&e, "AWS_SECRET_ACCESS_KEY").unwrap();
    assert_eq!(key.value, None, "a reference, never a value");
    let r = key
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (r.name.as_str(), r.key.as_str()),
        ("fallback-read", "AWS_SECRET_ACCESS_KEY")
    );
    assert!(find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT").is_none());
    let injected = recorded(&importer).unwrap();
    assert_eq!(injected.policy, format!("{ns}/prod"));
    assert_eq!(injected.role, Role::Importer);

    let backup = pods
        .create(&PostParams::default(), &pod("backup-0", "kong-backup"))
        .await
        .unwrap();
    let e = env(&backup);
    assert_eq!(
        find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT").and_then(|v| v.value.as_deref()),
        Some("on")
    );
    let node = find(&e, "KONG_NODE_ID").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.uid"
    );
    let r = find(&e, "AWS_ACCESS_KEY_ID")
        .unwrap()
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .clone()
        .unwrap();
    assert_eq!(r.name, "fallback-write");

    // Each answer is counted under its result and timed once, at the server's edge.
    let text = metrics.encode();
    let injected: u64 = text
        .lines()
        .find(|l| l.starts_with("kong_fallback_webhook_requests_total{result=\"injected\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(injected >= 2, "injections counted as such: {text}");
    let timed: u64 = text
        .lines()
        .find(|l| l.starts_with("kong_fallback_webhook_latency_seconds_count"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert_eq!(timed, requests(&metrics), "one time per answer: {text}");
    // An unrelated pod is untouched and never reaches the webhook.
    let before = requests(&metrics);
    let other = pods
        .create(&PostParams::default(), &pod("web-0", "web"))
        .await
        .unwrap();
    assert_eq!(env(&other).len(), 1);
    assert!(
        !other
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(ANNOTATION)
    );
    assert_eq!(
        requests(&metrics),
        before,
        "the apiserver did not call the webhook"
    );

    // Rotation: the certificate is due; a new CA and certificate are written, loaded and
    // registered, and admission keeps working.
    let old_ca = secrets.get("webhook-tls").await.unwrap().data.unwrap()["ca.crt"].clone();
    secrets
        .patch(
            "webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {certs::NOT_AFTER: "2000-01-01T00:00:00Z"}}}),
            ),
        )
        .await
        .unwrap();
    let new_ca = until("a rotated CA", async || {
        let s = secrets.get("webhook-tls").await.ok()?;
        let ca = s.data?.get("ca.crt")?.clone();
        (ca != old_ca).then_some(ca)
    })
    .await;
    until("the new CA in the caBundle", async || {
        let c = mwcs.get_opt(&configuration).await.ok()??;
        let bundle = c.webhooks?.into_iter().next()?.client_config.ca_bundle?;
        String::from_utf8_lossy(&bundle.0)
            .contains(String::from_utf8_lossy(&new_ca.0).trim())
            .then_some(())
    })
    .await;
    // NB: the caBundle now holds both CAs, so the apiserver would admit through the old
    // certificate too: wait until the server hands out a certificate that only the new CA
    // verifies, then admit through it.
    let only_new_ca = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&new_ca.0).unwrap()])
        .build()
        .unwrap();
    until(
        "the webhook serving a certificate of the new CA",
        async || only_new_ca.get(&webhook_url).send().await.ok().map(drop),
    )
    .await;
    let after = pods
        .create(&PostParams::default(), &pod("dp-1", "kong-dp"))
        .await
        .unwrap();
    assert!(find(&env(&after), "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT").is_some());

    // The status counts the pods and names the one created without the injection...
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let condition = |p: &FallbackConfigPolicy, t: &str| {
        p.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let p = until("dp-early reported", async || {
        let p = policies.get("prod").await.ok()?;
        let counts = p.status.as_ref()?.pods.clone()?;
        (counts.importers == 3).then_some(p)
    })
    .await;
    let counts = p.status.as_ref().unwrap().pods.clone().unwrap();
    assert_eq!((counts.backups, counts.not_injected), (1, 1));
    assert_eq!(counts.not_injected_pods, ["dp-early"]);
    let (status, reason, message) = condition(&p, "PodsInjected").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NotInjected"));
    assert!(message.contains("dp-early"), "{message}");
    // ...until it is gone (a restart would bring it back injected).
    pods.delete("dp-early", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until("all pods injected", async || {
        let p = policies.get("prod").await.ok()?;
        (condition(&p, "PodsInjected")?.1 == "AllInjected").then_some(())
    })
    .await;

    running.abort();
    mwcs.delete(&configuration, &DeleteParams::default())
        .await
        .unwrap();
}

fn credentials(name: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret"}
    }))
    .unwrap()
}

/// A typo in a Secret name, or a Secret an external-secrets tool deleted for a moment,
/// must never keep a Kong pod from starting: references are optional, and one the
/// controller knows to be missing is not injected at all. With `validationInterval: 0s`
/// the store is never probed.
#[tokio::test]
async fn a_missing_read_secret_never_blocks_an_importer_and_a_zero_interval_never_probes() {
    let env_ = kube().await;
    env_.install_crd(&FallbackConfigPolicy::crd())
        .await
        .unwrap();
    let client = env_.client().await.unwrap();
    let ns = env_.namespace("webhook-secret").await.unwrap();
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "storage": {
                "url": "s3://fallback/kong", "region": "eu-west-1",
                // Nothing listens there: a probe would fail.
                "endpoint": "http://127.0.0.1:9",
                "readCredentials": {"secretName": "fallback-read"},
                "validationInterval": "0s"
            },
            "exporter": {"mode": "None"}
        }),
    );
    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let configuration = kfo_testenv::unique_name("kfo-webhook");
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(crate::cluster::local_webhook(
            &ns,
            "webhook-tls",
            &configuration,
            registration::FailurePolicy::Fail,
            Duration::from_secs(1),
        )),
        ..controller::Settings::new("kfo-webhook-secret-test")
    };
    let health = settings.health.clone();
    let running = tokio::spawn(controller::run(client.clone(), settings));
    let condition = |p: &FallbackConfigPolicy, t: &str| {
        p.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    until("StorageReachable=False SecretMissing", async || {
        let p = policies.get("prod").await.ok()?;
        (condition(&p, "StorageReachable")? == ("False".into(), "SecretMissing".into()))
            .then_some(())
    })
    .await;
    until("ready", async || health.pending().is_empty().then_some(())).await;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    until("the webhook registration", async || {
        let c = mwcs.get_opt(&configuration).await.ok()??;
        let w = c.webhooks?.into_iter().next()?;
        let cond = w.match_conditions?.into_iter().next()?;
        cond.expression.contains(&ns).then_some(())
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let missing = pods
        .create(&PostParams::default(), &pod("dp-missing", "kong-dp"))
        .await
        .unwrap();
    let e = env(&missing);
    assert!(
        recorded(&missing).is_some(),
        "injected (without credentials)"
    );
    assert!(find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_IMPORT").is_some());
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        assert!(
            find(&e, name).is_none(),
            "{name} references a missing Secret"
        );
    }
    // Every reference a pod does get is optional: nothing can block it.
    for var in &e {
        if let Some(r) = var
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
        {
            assert_eq!(r.optional, Some(true), "{var:?}");
        }
    }

    // The Secret appears: new pods reference it, and the check is disabled, not failed.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &credentials("fallback-read"))
        .await
        .unwrap();
    until("StorageReachable=True CheckDisabled", async || {
        let p = policies.get("prod").await.ok()?;
        (condition(&p, "StorageReachable")? == ("True".into(), "CheckDisabled".into()))
            .then_some(())
    })
    .await;
    let fixed = pods
        .create(&PostParams::default(), &pod("dp-fixed", "kong-dp"))
        .await
        .unwrap();
    let key = find(&env(&fixed), "AWS_SECRET_ACCESS_KEY")
        .and_then(|v| v.value_from.clone()?.secret_key_ref)
        .expect("a reference once the Secret exists");
    assert_eq!(
        (key.name.as_str(), key.optional),
        ("fallback-read", Some(true))
    );
    // The pod created without credentials is reported, so a person knows to restart it.
    until("dp-missing reported as not injected", async || {
        let p = policies.get("prod").await.ok()?;
        let pods = p.status?.pods?;
        (pods.not_injected_pods == ["dp-missing"]).then_some(())
    })
    .await;

    running.abort();
    mwcs.delete(&configuration, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_certificate_not_there_yet_is_waited_for_not_fatal() {
    let client = kube().await.client().await.unwrap();
    let dir = std::env::temp_dir().join(kfo_testenv::unique_name("kfo-webhook-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let (addr, listener) = crate::cluster::loopback_listener();
    let settings = webhook::Settings {
        addr,
        listener: Some(listener),
        source: certs::Source::Files { dir: dir.clone() },
        configuration: kfo_testenv::unique_name("kfo-webhook-files"),
        target: registration::Target::Url(format!("https://{addr}/mutate")),
        failure_policy: registration::FailurePolicy::Ignore,
        timeout_seconds: 5,
        cert_check: Duration::from_secs(1),
    };
    let configuration = settings.configuration.clone();
    let health = std::sync::Arc::new(kong_fallback_operator::http::Health::new(&[
        webhook::CERT_LOADED,
    ]));
    let (_writer_kept, store) = {
        let (store, writer) = kube::runtime::reflector::store::<FallbackConfigPolicy>();
        (writer, store)
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(webhook::run(
        client.clone(),
        settings,
        store,
        Default::default(),
        Default::default(),
        health.clone(),
        stopped,
    ));
    // cert-manager has not written the files yet: still running, not ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "the webhook gave up");
    assert_eq!(health.pending(), [webhook::CERT_LOADED]);

    let (ca, cert, key) = certs::generate(
        &["127.0.0.1".into()],
        Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    for (f, v) in [("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca)] {
        std::fs::write(dir.join(f), v).unwrap();
    }
    until("the certificate loaded", async || {
        health.pending().is_empty().then_some(())
    })
    .await;
    running.abort();
    let _ = Api::<MutatingWebhookConfiguration>::all(client)
        .delete(&configuration, &DeleteParams::default())
        .await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ambient: true` (IRSA, EKS Pod Identity): the webhook injects the storage settings and
/// no credential at all, in importers and backup pods alike, and keeps the variables EKS's
/// own webhook put there; the operator reports the storage check as not its to make.
#[tokio::test]
async fn ambient_credentials_inject_no_secret_reference_and_storage_is_not_verifiable() {
    let env_ = kube().await;
    env_.install_crd(&FallbackConfigPolicy::crd())
        .await
        .unwrap();
    let client = env_.client().await.unwrap();
    let ns = env_.namespace("webhook-ambient").await.unwrap();
    let policy: FallbackConfigPolicy = crate::cluster::policy(
        "prod",
        json!({
            "dataPlanes": {"selector": {"matchLabels": {"app": "kong-dp"}}},
            "backup": {"selector": {"matchLabels": {"app": "kong-backup"}}},
            "storage": {
                "url": "s3://fallback/kong", "region": "eu-west-1",
                "readCredentials": {"ambient": true},
                "writeCredentials": {"ambient": true}
            },
            "exporter": {"mode": "BackupPods"},
            "election": {"mirrorToStorage": false}
        }),
    );
    Api::<FallbackConfigPolicy>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let configuration = kfo_testenv::unique_name("kfo-webhook-ambient");
    let settings = controller::Settings {
        namespace: Some(ns.clone()),
        webhook: Some(crate::cluster::local_webhook(
            &ns,
            "webhook-tls",
            &configuration,
            registration::FailurePolicy::Fail,
            Duration::from_secs(1),
        )),
        ambient_write_namespaces: vec![ns.clone()],
        ..controller::Settings::new("kfo-webhook-ambient-test")
    };
    let health = settings.health.clone();
    let running = tokio::spawn(controller::run(client.clone(), settings));
    until(
        "ready: caches synced and the certificate loaded",
        async || health.pending().is_empty().then_some(()),
    )
    .await;

    // What EKS's pod identity webhook adds to a pod of an annotated ServiceAccount.
    let irsa = |mut p: Pod| {
        p.spec.as_mut().unwrap().containers[0]
            .env
            .as_mut()
            .unwrap()
            .extend([
                EnvVar {
                    name: "AWS_ROLE_ARN".into(),
                    value: Some("arn:aws:iam::111122223333:role/kong-read".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "AWS_WEB_IDENTITY_TOKEN_FILE".into(),
                    value: Some("/var/run/secrets/eks.amazonaws.com/serviceaccount/token".into()),
                    ..Default::default()
                },
            ]);
        p
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, app, role) in [
        ("dp-0", "kong-dp", Role::Importer),
        ("backup-0", "kong-backup", Role::Backup),
    ] {
        let created = until(&format!("{name} injected"), async || {
            let p = pods
                .create(&PostParams::default(), &irsa(pod(name, app)))
                .await
                .ok()?;
            if recorded(&p).is_some() {
                return Some(p);
            }
            // Admitted before the registration covered the namespace: try again.
            let _ = pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
            None
        })
        .await;
        assert_eq!(recorded(&created).unwrap().role, role);
        let e = env(&created);
        assert_eq!(
            find(&e, "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE").and_then(|v| v.value.as_deref()),
            Some("s3://fallback/kong"),
            "{name}"
        );
        assert_eq!(
            find(&e, "AWS_REGION").and_then(|v| v.value.as_deref()),
            Some("eu-west-1"),
            "{name}"
        );
        assert!(
            e.iter().all(|v| v
                .value_from
                .as_ref()
                .is_none_or(|f| f.secret_key_ref.is_none())),
            "{name}: a Secret reference was injected: {e:?}"
        );
        for key in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "GCP_SERVICE_ACCOUNT",
        ] {
            assert!(find(&e, key).is_none(), "{name}: {key} injected: {e:?}");
        }
        assert_eq!(
            find(&e, "AWS_ROLE_ARN").and_then(|v| v.value.as_deref()),
            Some("arn:aws:iam::111122223333:role/kong-read"),
            "{name}"
        );
        assert!(find(&e, "AWS_WEB_IDENTITY_TOKEN_FILE").is_some(), "{name}");
    }

    let policies: Api<FallbackConfigPolicy> = Api::namespaced(client.clone(), &ns);
    let (reason, message) = until("StorageReachable Unknown", async || {
        let p = policies.get("prod").await.ok()?;
        let (status, reason, message) = crate::cluster::condition(&p, "StorageReachable")?;
        (status == "Unknown").then_some((reason, message))
    })
    .await;
    assert_eq!(reason, "NotVerifiable", "{message}");

    running.abort();
    Api::<MutatingWebhookConfiguration>::all(client)
        .delete(&configuration, &DeleteParams::default())
        .await
        .unwrap();
}
